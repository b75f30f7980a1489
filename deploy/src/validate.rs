//! Structural checks of rendered outputs: required fields, consistent references, nothing left unfilled.
//!
//! The renderers are tested against golden files; these checks say *why* an output is unusable, and run on
//! every render (`cinfer-deploy` refuses to write a bundle that fails them).

use serde_json::Value;

/// Paths of string values that look like unfilled template text: `{{`, `${`, `{name}`, `TODO`, `CHANGEME`,
/// `<...>`, `REPLACE`.
pub fn placeholders(value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    walk(value, "$", &mut found);
    found
}

fn walk(value: &Value, path: &str, found: &mut Vec<String>) {
    match value {
        Value::String(s) if looks_unfilled(s) => found.push(format!("{path}: {s:?}")),
        Value::Object(map) => {
            for (k, v) in map {
                if looks_unfilled(k) {
                    found.push(format!("{path} key {k:?}"));
                }
                walk(v, &format!("{path}.{k}"), found);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

/// Does this text look like an unfilled placeholder?
pub fn looks_unfilled(s: &str) -> bool {
    // Long base64 (a policy, the sidecar arguments) can spell anything by chance; it has no placeholders.
    if s.len() > 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    {
        return false;
    }
    let upper = s.to_ascii_uppercase();
    if s.contains("{{")
        || s.contains("${")
        || s.contains("TODO")
        || upper.contains("CHANGEME")
        || s.contains("REPLACE_")
    {
        return true;
    }
    // `<something>` (angle-bracket placeholders) and `{snake_case}` (our own command substitutions).
    let angle = s.find('<').is_some_and(|i| {
        s[i..]
            .find('>')
            .is_some_and(|j| j > 1 && !s[i + 1..i + j].contains(' '))
    });
    let brace = s.match_indices('{').any(|(i, _)| {
        s[i + 1..]
            .find('}')
            .is_some_and(|j| j > 0 && s[i + 1..i + 1 + j].bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    });
    angle || brace
}

fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| match key.parse::<usize>() {
        Ok(i) => v.get(i),
        Err(_) => v.get(*key),
    })
}

fn require(problems: &mut Vec<String>, value: &Value, path: &[&str]) {
    let present = match get(value, path) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    if !present {
        problems.push(format!("missing {}", path.join(".")));
    }
}

/// Problems of an ARM template and its parameters; `expect_policy` says whether `ccePolicy` must be filled.
pub fn check_arm(template: &Value, parameters: &Value, expect_policy: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for path in [
        &["$schema"][..],
        &["contentVersion"],
        &["resources", "0", "type"],
        &["resources", "0", "apiVersion"],
    ] {
        require(&mut problems, template, path);
    }
    let group = get(template, &["resources", "0"]).cloned().unwrap_or_default();
    if group["type"] != "Microsoft.ContainerInstance/containerGroups" {
        problems.push("resources[0] is not a container group".to_owned());
    }
    if group["properties"]["sku"] != "Confidential" {
        problems.push("the container group is not of the Confidential SKU".to_owned());
    }
    require(
        &mut problems,
        &group,
        &["properties", "confidentialComputeProperties", "ccePolicy"],
    );
    let kinds = ["initContainers", "containers"];
    for kind in kinds {
        let containers = group["properties"][kind].as_array().cloned().unwrap_or_default();
        if containers.is_empty() {
            problems.push(format!("no {kind}"));
        }
        for (i, c) in containers.iter().enumerate() {
            let i = i.to_string();
            for field in [&["name"][..], &["properties", "image"], &["properties", "command"]] {
                let mut path = vec![kind, &i];
                path.extend_from_slice(field);
                require(&mut problems, &group["properties"], &path);
            }
            if kind == "containers" {
                require(&mut problems, c, &["properties", "resources", "requests", "cpu"]);
                require(&mut problems, c, &["properties", "resources", "requests", "memoryInGB"]);
            }
        }
    }
    // Every `parameters('x')` used is declared; every declared parameter without a default has a value.
    let declared = template["parameters"].as_object().cloned().unwrap_or_default();
    let text = template.to_string();
    for used in text
        .split("parameters('")
        .skip(1)
        .filter_map(|s| s.split_once("')").map(|(n, _)| n))
    {
        if !declared.contains_key(used) {
            problems.push(format!("parameter {used:?} is used but not declared"));
        }
    }
    for (name, decl) in &declared {
        let has_value = parameters["parameters"][name]["value"]
            .as_str()
            .is_some_and(|v| !v.is_empty());
        if decl.get("defaultValue").is_none() && !has_value && (name != "ccePolicy" || expect_policy) {
            problems.push(format!("parameter {name:?} has neither a default nor a value"));
        }
    }
    for (what, doc) in [("template", template), ("parameters", parameters)] {
        problems.extend(placeholders(doc).into_iter().map(|p| format!("{what}: unfilled {p}")));
    }
    problems
}

/// Problems of the Deployment and Service; `expect_policy` says whether the policy annotation must be there.
pub fn check_k8s(deployment: &Value, service: &Value, expect_policy: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for (doc, kind) in [(deployment, "Deployment"), (service, "Service")] {
        if doc["kind"] != kind {
            problems.push(format!("expected kind {kind}, got {}", doc["kind"]));
        }
        require(&mut problems, doc, &["apiVersion"]);
        require(&mut problems, doc, &["metadata", "name"]);
    }
    let pod = &deployment["spec"]["template"];
    require(&mut problems, pod, &["spec", "runtimeClassName"]);
    require(&mut problems, &deployment["spec"], &["replicas"]);
    let labels = &pod["metadata"]["labels"];
    for (selector, what) in [
        (&deployment["spec"]["selector"]["matchLabels"], "Deployment selector"),
        (&service["spec"]["selector"], "Service selector"),
    ] {
        match selector.as_object() {
            Some(sel) if !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k] == v) => {}
            _ => problems.push(format!("{what} does not match the pod labels")),
        }
    }
    for kind in ["initContainers", "containers"] {
        let containers = pod["spec"][kind].as_array().cloned().unwrap_or_default();
        if containers.is_empty() {
            problems.push(format!("no {kind}"));
        }
        for c in &containers {
            for field in ["name", "image", "command"] {
                require(&mut problems, c, &[field]);
            }
        }
    }
    problems.extend(
        crate::platform::check_aks(deployment, expect_policy)
            .iter()
            .map(ToString::to_string),
    );
    for (what, doc) in [("deployment", deployment), ("service", service)] {
        problems.extend(placeholders(doc).into_iter().map(|p| format!("{what}: unfilled {p}")));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_unfilled_catches_template_leftovers_but_not_arm_expressions() {
        for s in [
            "{{ .Values.x }}",
            "${HOSTDATA}",
            "<your-vault>",
            "TODO",
            "--listen={port}",
            "changeme",
            "REPLACE_ME",
        ] {
            assert!(looks_unfilled(s), "{s}");
        }
        for s in [
            "[parameters('name')]",
            "https://maa.example",
            "a < b > c",
            "{\"k\":1}",
            "x-ms-sevsnpvm-hostdata",
            &"todo".repeat(40),
        ] {
            assert!(!looks_unfilled(s), "{s}");
        }
    }
}
