//! Canonical XML 1.1 (W3C, `http://www.w3.org/2006/12/xml-c14n11`, without comments), restricted to what
//! NVIDIA's signed RIMs use: elements, attributes, namespace declarations and text, no DTD (refused by the
//! parser, so no entity declarations or default attributes), no processing instructions, no `xml:*`
//! attributes (the only place where 1.1 differs from 1.0 is their inheritance into a document subset).
//! Anything outside that subset is refused, never canonicalized approximately.
//!
//! Why our own: the RIMs declare inclusive C14N 1.1 (not exclusive C14N), and crates.io offers no small,
//! established pure-Rust canonicalizer for it. `xml_c14n` binds libxml2 (C); `xml-sec` 0.4 is a young
//! (0.1 → 0.4 within months) general XML-security stack with its own parsers and dozens of crypto
//! dependencies; `xml-canonical` implements 1.0 and exclusive only. The subset needed here is ~150 lines
//! over `roxmltree`, which already resolves namespaces and normalizes attribute values and line ends; the
//! real NVIDIA signatures in `tests/data/nvidia/` are the oracle that it is right (a wrong byte breaks them).
//!
//! Two node sets are needed for an enveloped signature:
//! * the whole document less one element's subtree (the `ds:Signature`; reference `URI=""` with the
//!   enveloped-signature transform): [`canonicalize_document_without`];
//! * one element's subtree as the apex of its own output (the `ds:SignedInfo`), which in inclusive C14N
//!   carries every namespace in scope there, inherited ones included: [`canonicalize_subtree`].

use std::collections::BTreeMap;

use roxmltree::{Node, NodeId, NodeType};

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Canonicalize the document element and its content, leaving out the subtree of `exclude`.
pub fn canonicalize_document_without(doc: &roxmltree::Document<'_>, exclude: NodeId) -> Result<Vec<u8>, String> {
    check_subset(doc)?;
    let mut out = Vec::with_capacity(doc.input_text().len());
    write_element(doc.root_element(), &BTreeMap::new(), Some(exclude), &mut out)?;
    Ok(out)
}

/// Canonicalize `node`'s subtree as a document subset whose apex is `node`.
pub fn canonicalize_subtree(node: Node<'_, '_>) -> Result<Vec<u8>, String> {
    check_subset(node.document())?;
    let mut out = Vec::new();
    write_element(node, &BTreeMap::new(), None, &mut out)?;
    Ok(out)
}

/// Refuse what this canonicalizer does not implement.
fn check_subset(doc: &roxmltree::Document<'_>) -> Result<(), String> {
    for n in doc.descendants() {
        match n.node_type() {
            NodeType::PI => return Err("processing instructions are not supported".into()),
            NodeType::Element => {
                if n.attributes().any(|a| a.namespace() == Some(XML_NS)) {
                    return Err(format!("xml:* attribute on <{}> is not supported", n.tag_name().name()));
                }
            }
            NodeType::Root | NodeType::Text | NodeType::Comment => {}
        }
    }
    Ok(())
}

/// The qualified name as written in the source (`ns0:Resource`): C14N keeps prefixes, and several prefixes
/// may name one namespace (these RIMs bind both the default namespace and `ns0` to the SWID schema).
fn element_qname<'a>(node: Node<'_, 'a>) -> Result<&'a str, String> {
    let text = node.document().input_text();
    let start = node.range().start + 1;
    let rest = text.get(start..).ok_or("element position out of range")?;
    let len = rest
        .find(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/')
        .ok_or("unterminated start tag")?;
    Ok(&rest[..len])
}

fn in_scope(node: Node<'_, '_>) -> BTreeMap<String, String> {
    node.namespaces()
        .filter(|ns| ns.uri() != XML_NS)
        .map(|ns| (ns.name().unwrap_or("").to_string(), ns.uri().to_string()))
        .filter(|(prefix, uri)| !(prefix.is_empty() && uri.is_empty()))
        .collect()
}

fn write_element(
    node: Node<'_, '_>,
    parent_rendered: &BTreeMap<String, String>,
    exclude: Option<NodeId>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let qname = element_qname(node)?;
    let scope = in_scope(node);
    out.push(b'<');
    out.extend_from_slice(qname.as_bytes());

    // Namespace nodes not already rendered by the nearest output ancestor with the same value; the default
    // namespace first (empty prefix sorts first), then by prefix. An undeclared default becomes xmlns="".
    if !scope.contains_key("") && parent_rendered.get("").is_some_and(|u| !u.is_empty()) {
        out.extend_from_slice(b" xmlns=\"\"");
    }
    for (prefix, uri) in &scope {
        if parent_rendered.get(prefix) == Some(uri) {
            continue;
        }
        if prefix.is_empty() {
            out.extend_from_slice(b" xmlns=\"");
        } else {
            out.extend_from_slice(b" xmlns:");
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(b"=\"");
        }
        escape_attr(uri, out);
        out.push(b'"');
    }

    // Attributes sorted by (namespace URI, local name); unqualified ones (no namespace) first.
    let text = node.document().input_text();
    let mut attrs: Vec<(&str, &str, &str, &str)> = node
        .attributes()
        .map(|a| {
            let q = text.get(a.range_qname()).unwrap_or(a.name());
            (a.namespace().unwrap_or(""), a.name(), q, a.value())
        })
        .collect();
    attrs.sort_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)));
    for (_, _, q, v) in attrs {
        out.push(b' ');
        out.extend_from_slice(q.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_attr(v, out);
        out.push(b'"');
    }
    out.push(b'>');

    for child in node.children() {
        if Some(child.id()) == exclude {
            continue;
        }
        match child.node_type() {
            NodeType::Element => write_element(child, &scope, exclude, out)?,
            NodeType::Text => escape_text(child.text().unwrap_or(""), out),
            NodeType::Comment => {}
            NodeType::PI | NodeType::Root => return Err("unexpected node in element content".into()),
        }
    }
    out.extend_from_slice(b"</");
    out.extend_from_slice(qname.as_bytes());
    out.push(b'>');
    Ok(())
}

fn escape_text(s: &str, out: &mut Vec<u8>) {
    for c in s.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '>' => out.extend_from_slice(b"&gt;"),
            '\r' => out.extend_from_slice(b"&#xD;"),
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}

fn escape_attr(s: &str, out: &mut Vec<u8>) {
    for c in s.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '"' => out.extend_from_slice(b"&quot;"),
            '\t' => out.extend_from_slice(b"&#x9;"),
            '\n' => out.extend_from_slice(b"&#xA;"),
            '\r' => out.extend_from_slice(b"&#xD;"),
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c14n(xml: &str) -> String {
        let doc = roxmltree::Document::parse(xml).unwrap();
        let dummy = doc.root().id();
        String::from_utf8(canonicalize_document_without(&doc, dummy).unwrap()).unwrap()
    }

    // Examples from the Canonical XML 1.1 recommendation, section 3 (restricted to the supported subset).
    #[test]
    fn empty_elements_attribute_order_and_namespaces() {
        let got = c14n(
            r#"<doc xmlns="http://example.com/default" xmlns:a="http://www.w3.org" xmlns:b="http://www.ietf.org"><e5 a:attr="out" b:attr="sorted" attr2="all" attr="I'm" xmlns:b2="http://www.ietf.org"/><e3   name = "elem3"   id="elem3"   /></doc>"#,
        );
        assert_eq!(
            got,
            r#"<doc xmlns="http://example.com/default" xmlns:a="http://www.w3.org" xmlns:b="http://www.ietf.org"><e5 xmlns:b2="http://www.ietf.org" attr="I'm" attr2="all" b:attr="sorted" a:attr="out"></e5><e3 id="elem3" name="elem3"></e3></doc>"#
        );
    }

    #[test]
    fn escapes_and_normalized_attribute_values() {
        let got = c14n("<doc><t a=\"x&#10;y\tz\" b='\"&amp;&lt;'>&lt;&gt;&amp;\"'</t><!-- gone --></doc>");
        assert_eq!(
            got,
            "<doc><t a=\"x&#xA;y z\" b=\"&quot;&amp;&lt;\">&lt;&gt;&amp;\"'</t></doc>"
        );
    }

    #[test]
    fn redundant_declarations_dropped_and_default_undeclared() {
        let got = c14n(r#"<a xmlns="urn:x" xmlns:p="urn:p"><p:b xmlns:p="urn:p"><c xmlns=""/></p:b></a>"#);
        assert_eq!(
            got,
            r#"<a xmlns="urn:x" xmlns:p="urn:p"><p:b><c xmlns=""></c></p:b></a>"#
        );
    }

    #[test]
    fn subtree_apex_carries_inherited_namespaces() {
        let doc =
            roxmltree::Document::parse(r#"<a xmlns="urn:x" xmlns:z="urn:z"><s:b xmlns:s="urn:s"><s:c/></s:b></a>"#)
                .unwrap();
        let b = doc.root_element().first_element_child().unwrap();
        let got = String::from_utf8(canonicalize_subtree(b).unwrap()).unwrap();
        assert_eq!(
            got,
            r#"<s:b xmlns="urn:x" xmlns:s="urn:s" xmlns:z="urn:z"><s:c></s:c></s:b>"#
        );
    }

    #[test]
    fn excluded_subtree_is_left_out() {
        let doc = roxmltree::Document::parse("<a>\n<b>x</b>\n<sig><x/></sig></a>").unwrap();
        let sig = doc.descendants().find(|n| n.has_tag_name("sig")).unwrap();
        let got = String::from_utf8(canonicalize_document_without(&doc, sig.id()).unwrap()).unwrap();
        assert_eq!(got, "<a>\n<b>x</b>\n</a>");
    }

    #[test]
    fn unsupported_constructs_are_refused() {
        for xml in ["<a><?pi x?></a>", r#"<a xml:lang="en"/>"#] {
            let doc = roxmltree::Document::parse(xml).unwrap();
            assert!(canonicalize_subtree(doc.root_element()).is_err(), "{xml}");
        }
    }
}
