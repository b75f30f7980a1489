//! Static checks of the Containerfiles (the buildah build itself is `deploy/containers/build.sh`).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

/// (image, binary, user, entrypoint)
const IMAGES: &[(&str, &str, &str, &str)] = &[
    ("init", "cinfer-init", "0:0", r#"["/usr/local/bin/cinfer-init"]"#),
    ("encfs", "cinfer-encfs", "0:0", r#"["/usr/local/bin/cinfer-encfs"]"#),
    (
        "proxy",
        "cinfer-proxy",
        "65532:65532",
        r#"["/usr/local/bin/cinfer-proxy"]"#,
    ),
    (
        "client-proxy",
        "cinfer-proxy",
        "65532:65532",
        r#"["/usr/local/bin/cinfer-proxy", "client"]"#,
    ),
    (
        "attest",
        "cinfer-attest",
        "65532:65532",
        r#"["/usr/local/bin/cinfer-attest"]"#,
    ),
];

#[test]
fn each_containerfile_copies_its_release_binary_onto_a_debian_base_with_the_expected_user() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("containers");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .into_string()
                .unwrap()
                .strip_suffix(".Containerfile")
                .map(str::to_owned)
        })
        .collect();
    found.sort();
    let mut expected: Vec<String> = IMAGES.iter().map(|i| i.0.to_owned()).collect();
    expected.sort();
    assert_eq!(found, expected);
    for (name, binary, user, entrypoint) in IMAGES {
        let text = std::fs::read_to_string(dir.join(format!("{name}.Containerfile"))).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        assert_eq!(lines[0], "ARG BASE=docker.io/library/debian:bookworm-slim", "{name}");
        assert_eq!(lines[1], "FROM ${BASE}", "{name}");
        assert!(
            lines.contains(&format!("COPY target/release/{binary} /usr/local/bin/{binary}").as_str()),
            "{name}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("USER ")).collect::<Vec<_>>(),
            [&format!("USER {user}")],
            "{name}"
        );
        assert_eq!(lines.last().unwrap(), &format!("ENTRYPOINT {entrypoint}"), "{name}");
        assert!(
            !text.contains("curl ") && !text.contains("wget "),
            "{name}: no downloads besides Debian packages"
        );
    }
}

#[test]
fn rendered_deployments_run_binaries_where_the_containerfiles_put_them() {
    let init =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/aci/template.json"))
            .unwrap();
    for binary in [
        "/usr/local/bin/cinfer-init",
        "/usr/local/bin/cinfer-encfs",
        "/usr/local/bin/cinfer-proxy",
    ] {
        assert!(init.contains(&format!("\"{binary}\"")), "{binary}");
    }
}
