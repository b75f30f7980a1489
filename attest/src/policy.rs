//! Policies: the attestation policy the service enforces before issuing a token (MAA policy text, optionally
//! signed by an auditor as a JWS), and the AKV release policy a key carries.
//!
//! **Attestation policy** (a subset of the MAA policy language):
//!
//! ```text
//! version= 1.0;
//! authorizationrules
//! {
//!     [type=="x-ms-sevsnpvm-hostdata", value=="cadd74f7..."]
//!     && [type=="x-ms-sevsnpvm-is-debuggable", value==false] => permit();
//! };
//! ```
//!
//! Rules are tried in order; the first whose conditions all hold decides (`permit()` or `deny()`); when
//! none holds, the policy denies. A condition is `[type=="<claim>", value==<string|true|false|number>]`
//! (an optional `c:` prefix and `issuer==".."` attribute are accepted and ignored). `=> permit();` alone
//! permits everything (MAA's default policy).
//!
//! The value comparison is one of MAA's operators: `==` and `!=` for any value, and, for integers only,
//! `<`, `<=`, `>`, `>=` (e.g. `[type=="x-ms-sevsnpvm-snpfw-svn", value>=23]`). An ordered comparison holds only
//! when the claim is a JSON integer; a claim that is absent never satisfies a condition, `!=` included.
//!
//! **Signed policy**: a compact JWS (RS256) with `x5c = [b64(DER cert)]` and payload
//! `{"AttestationPolicy": "<base64url(policy text)>"}`, as the seed's `generate_and_sign_policy.sh` and
//! MAA produce. The service accepts it only if the certificate's key is one of its trusted policy signers,
//! and reports the signer in `x-ms-policy-signer`.
//!
//! **Release policy** (AKV JSON): `{"version":"1.0.0","anyOf":[{"authority":"https://..","allOf":
//! [{"claim":"x-ms-sevsnpvm-hostdata","equals":"<hex>"}]}]}`. A token satisfies it when its issuer is a
//! clause's authority and every `allOf` condition holds. A condition has one of AKV's operators:
//! `equals` (strings compare exactly; a boolean or number claim equals its JSON text, so `"false"` matches
//! `false` as in AKV), `notEquals`, the ordered `less`, `lessOrEquals`, `greater`, `greaterOrEquals` (both
//! sides integers, as JSON numbers or decimal strings, e.g. `{"claim":"x-ms-sevsnpvm-microcode-svn",
//! "greaterOrEquals":219}`), and `exists` (`true`/`false`).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64STD, URL_SAFE_NO_PAD as B64URL};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{PolicyError, ReleaseError};
use crate::token::{Claims, cert_fingerprint, normalize_issuer, peek_header, rsa_key_from_cert_der, verify_jws_rs256};

/// Does a claim value equal an expected value? Exact JSON equality, or a string equal to the JSON text of a
/// boolean or number claim (AKV semantics).
pub fn claim_equals(actual: &Value, expected: &Value) -> bool {
    if actual == expected {
        return true;
    }
    match (actual, expected) {
        (Value::Bool(b), Value::String(s)) => s == if *b { "true" } else { "false" },
        (Value::Number(n), Value::String(s)) => *s == n.to_string(),
        (Value::String(s), Value::Bool(b)) => s == if *b { "true" } else { "false" },
        (Value::String(s), Value::Number(n)) => *s == n.to_string(),
        _ => false,
    }
}

/// A comparison operator of the attestation-policy language (MAA's set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn from_punct(p: &str) -> Option<Self> {
        Some(match p {
            "==" => Self::Eq,
            "!=" => Self::Ne,
            "<" => Self::Lt,
            "<=" => Self::Le,
            ">" => Self::Gt,
            ">=" => Self::Ge,
            _ => return None,
        })
    }

    fn symbol(self) -> &'static str {
        match self {
            Self::Eq => "==",
            Self::Ne => "!=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }

    fn is_ordered(self) -> bool {
        !matches!(self, Self::Eq | Self::Ne)
    }

    /// Does `actual` (absent: `None`) compare to `expected` as this operator says?
    fn holds(self, actual: Option<&Value>, expected: &Value) -> bool {
        let Some(actual) = actual else {
            return false;
        };
        match self {
            Self::Eq => claim_equals(actual, expected),
            Self::Ne => !claim_equals(actual, expected),
            ordered => match (json_integer(actual), json_integer(expected)) {
                (Some(a), Some(e)) => ordered.orders(a, e),
                _ => false,
            },
        }
    }

    fn orders(self, a: i128, e: i128) -> bool {
        match self {
            Self::Eq => a == e,
            Self::Ne => a != e,
            Self::Lt => a < e,
            Self::Le => a <= e,
            Self::Gt => a > e,
            Self::Ge => a >= e,
        }
    }
}

/// A JSON integer (number without fraction) as `i128`.
fn json_integer(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)),
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Condition {
    claim: String,
    op: Cmp,
    value: Value,
}

#[derive(Clone, Debug, PartialEq)]
struct Rule {
    conditions: Vec<Condition>,
    permit: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Punct(&'static str),
}

fn lex(text: &str) -> Result<Vec<(Tok, usize)>, PolicyError> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let err = |detail: &str, offset: usize| PolicyError::Parse {
        detail: detail.to_string(),
        offset,
    };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'"' {
            let start = i;
            i += 1;
            let mut s = String::new();
            loop {
                match b.get(i) {
                    None => return Err(err("unterminated string", start)),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        // Copy the escaped character (whole UTF-8 sequence).
                        let Some(ch) = text.get(i + 1..).and_then(|r| r.chars().next()) else {
                            return Err(err("unterminated string", start));
                        };
                        s.push(ch);
                        i += 1 + ch.len_utf8();
                    }
                    Some(_) => {
                        // Copy one UTF-8 character.
                        let rest = &text[i..];
                        let ch = rest.chars().next().ok_or_else(|| err("invalid UTF-8", i))?;
                        s.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push((Tok::Str(s), start));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'-') {
                i += 1;
            }
            out.push((Tok::Ident(text[start..i].to_ascii_lowercase()), start));
        } else if c.is_ascii_digit() || c == b'-' {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            out.push((Tok::Num(text[start..i].to_string()), start));
        } else {
            let two = b.get(i..i + 2).unwrap_or_default();
            let p: &'static str = match two {
                b"==" => "==",
                b"!=" => "!=",
                b"<=" => "<=",
                b">=" => ">=",
                b"&&" => "&&",
                b"=>" => "=>",
                _ => match c {
                    b'<' => "<",
                    b'>' => ">",
                    b'=' => "=",
                    b';' => ";",
                    b'{' => "{",
                    b'}' => "}",
                    b'[' => "[",
                    b']' => "]",
                    b',' => ",",
                    b'(' => "(",
                    b')' => ")",
                    b':' => ":",
                    _ => return Err(err(&format!("unexpected character {:?}", c as char), i)),
                },
            };
            out.push((Tok::Punct(p), i));
            i += p.len();
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn offset(&self) -> usize {
        self.toks.get(self.pos).map(|t| t.1).unwrap_or(self.end)
    }
    fn err(&self, detail: impl Into<String>) -> PolicyError {
        PolicyError::Parse {
            detail: detail.into(),
            offset: self.offset(),
        }
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|t| t.0.clone());
        self.pos += 1;
        t
    }
    fn punct(&mut self, p: &str) -> Result<(), PolicyError> {
        match self.peek() {
            Some(Tok::Punct(q)) if *q == p => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(self.err(format!("expected `{p}`"))),
        }
    }
    fn ident(&mut self, name: &str) -> Result<(), PolicyError> {
        match self.peek() {
            Some(Tok::Ident(q)) if q == name => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(self.err(format!("expected `{name}`"))),
        }
    }
    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Some(Tok::Punct(q)) if *q == p)
    }

    fn literal(&mut self) -> Result<Value, PolicyError> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Value::String(s)),
            Some(Tok::Ident(i)) if i == "true" => Ok(Value::Bool(true)),
            Some(Tok::Ident(i)) if i == "false" => Ok(Value::Bool(false)),
            Some(Tok::Num(n)) => {
                self.pos -= 1;
                let v = serde_json::from_str::<serde_json::Number>(&n).map_err(|_| self.err("invalid number"))?;
                self.pos += 1;
                Ok(Value::Number(v))
            }
            _ => {
                self.pos = self.pos.saturating_sub(1);
                Err(self.err("expected a string, true, false or a number"))
            }
        }
    }

    fn condition(&mut self) -> Result<Condition, PolicyError> {
        if matches!(self.peek(), Some(Tok::Ident(i)) if i == "c") {
            self.pos += 1;
            self.punct(":")?;
        }
        self.punct("[")?;
        let (mut claim, mut value) = (None, None);
        loop {
            let Some(Tok::Ident(attr)) = self.next() else {
                self.pos -= 1;
                return Err(self.err("expected `type`, `value` or `issuer`"));
            };
            let op = match self.peek() {
                Some(Tok::Punct(p)) => Cmp::from_punct(p),
                _ => None,
            }
            .ok_or_else(|| self.err("expected a comparison (==, !=, <, <=, >, >=)"))?;
            if op != Cmp::Eq && attr != "value" {
                return Err(self.err(format!("`{attr}` is compared with == only")));
            }
            self.pos += 1;
            let lit = self.literal()?;
            if op.is_ordered() && json_integer(&lit).is_none() {
                self.pos -= 1;
                return Err(self.err(format!("`{}` compares integers only", op.symbol())));
            }
            match attr.as_str() {
                "type" => match lit {
                    Value::String(s) => claim = Some(s),
                    _ => return Err(self.err("type must be a string")),
                },
                "value" => value = Some((op, lit)),
                "issuer" => {}
                other => return Err(self.err(format!("unknown attribute `{other}`"))),
            }
            if self.is_punct(",") {
                self.pos += 1;
                continue;
            }
            self.punct("]")?;
            break;
        }
        match (claim, value) {
            (Some(claim), Some((op, value))) => Ok(Condition { claim, op, value }),
            _ => Err(self.err("a condition needs both type== and value==")),
        }
    }

    fn rule(&mut self) -> Result<Rule, PolicyError> {
        let mut conditions = Vec::new();
        if !self.is_punct("=>") {
            conditions.push(self.condition()?);
            while self.is_punct("&&") {
                self.pos += 1;
                conditions.push(self.condition()?);
            }
        }
        self.punct("=>")?;
        let permit = match self.next() {
            Some(Tok::Ident(a)) if a == "permit" => true,
            Some(Tok::Ident(a)) if a == "deny" => false,
            _ => {
                self.pos -= 1;
                return Err(self.err("expected permit() or deny()"));
            }
        };
        self.punct("(")?;
        self.punct(")")?;
        self.punct(";")?;
        Ok(Rule { conditions, permit })
    }

    fn policy(&mut self) -> Result<Vec<Rule>, PolicyError> {
        self.ident("version")?;
        self.punct("=")?;
        match self.next() {
            Some(Tok::Num(v)) if v == "1.0" || v == "1" => {}
            _ => {
                self.pos -= 1;
                return Err(self.err("expected version 1.0"));
            }
        }
        self.punct(";")?;
        self.ident("authorizationrules")?;
        self.punct("{")?;
        let mut rules = Vec::new();
        while !self.is_punct("}") {
            if self.peek().is_none() {
                return Err(self.err("unterminated authorizationrules"));
            }
            rules.push(self.rule()?);
        }
        self.punct("}")?;
        self.punct(";")?;
        if self.peek().is_some() {
            return Err(self.err("unexpected input after authorizationrules (only authorizationrules is supported)"));
        }
        Ok(rules)
    }
}

/// Who signed a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySigner {
    /// DER of the signing certificate (`x5c[0]`).
    pub cert_der: Vec<u8>,
}

impl PolicySigner {
    /// The `x-ms-policy-signer` claim: `{"kty":"RSA","n","e","x5c":[b64(DER)]}`.
    pub fn claim(&self) -> Value {
        let mut v = serde_json::json!({"kty": "RSA", "x5c": [B64STD.encode(&self.cert_der)]});
        if let Some(key) = rsa_key_from_cert_der(&self.cert_der) {
            use rsa::traits::PublicKeyParts;
            v["n"] = Value::String(B64URL.encode(key.n_bytes()));
            v["e"] = Value::String(B64URL.encode(key.e_bytes()));
        }
        v
    }
}

/// A parsed attestation policy.
#[derive(Clone, Debug, PartialEq)]
pub struct AttestationPolicy {
    rules: Vec<Rule>,
    text: String,
    signer: Option<PolicySigner>,
}

impl AttestationPolicy {
    /// MAA's default: permit any verified evidence.
    pub fn permit_all() -> Self {
        Self {
            rules: vec![Rule {
                conditions: vec![],
                permit: true,
            }],
            text: "version=1.0; authorizationrules { => permit(); };".into(),
            signer: None,
        }
    }

    /// Parse unsigned policy text.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let toks = lex(text)?;
        let mut p = Parser {
            toks,
            pos: 0,
            end: text.len(),
        };
        let rules = p.policy()?;
        Ok(Self {
            rules,
            text: text.to_string(),
            signer: None,
        })
    }

    /// Load a policy document: a signed JWS (three dot-separated base64url parts) or plain text. When
    /// `trusted_signers` (DER certificates) is non-empty, the document must be a JWS signed by one of their
    /// keys.
    pub fn from_document(doc: &str, trusted_signers: &[Vec<u8>]) -> Result<Self, PolicyError> {
        let doc = doc.trim();
        let looks_jws = doc.split('.').count() == 3 && !doc.contains(char::is_whitespace);
        if !looks_jws {
            if !trusted_signers.is_empty() {
                return Err(PolicyError::Unsigned);
            }
            return Self::parse(doc);
        }
        let sig_err = |detail: String| PolicyError::Signature { detail };
        let header = peek_header(doc).map_err(|e| sig_err(e.to_string()))?;
        let x5c0 = header
            .get("x5c")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .ok_or_else(|| sig_err("JWS header has no x5c certificate".into()))?;
        let cert_der = B64STD.decode(x5c0).map_err(|e| sig_err(format!("x5c: {e}")))?;
        let key = rsa_key_from_cert_der(&cert_der).ok_or_else(|| sig_err("x5c[0] is not an RSA certificate".into()))?;
        let payload = verify_jws_rs256(doc, &key).map_err(|e| sig_err(e.to_string()))?;
        if !trusted_signers.is_empty()
            && !trusted_signers
                .iter()
                .any(|t| rsa_key_from_cert_der(t).is_some_and(|k| k == key))
        {
            return Err(PolicyError::UntrustedSigner {
                fingerprint: cert_fingerprint(&cert_der),
            });
        }
        let b64 = payload
            .get("AttestationPolicy")
            .and_then(Value::as_str)
            .ok_or_else(|| sig_err("payload has no AttestationPolicy".into()))?;
        let text = B64URL
            .decode(b64.trim_end_matches('='))
            .map_err(|e| sig_err(format!("AttestationPolicy: {e}")))?;
        let text = String::from_utf8(text).map_err(|_| sig_err("AttestationPolicy is not UTF-8".into()))?;
        let mut policy = Self::parse(&text)?;
        policy.signer = Some(PolicySigner { cert_der });
        Ok(policy)
    }

    /// The signer, when the policy was signed.
    pub fn signer(&self) -> Option<&PolicySigner> {
        self.signer.as_ref()
    }

    /// The policy text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// `x-ms-policy-hash`: base64url SHA-256 of the policy text.
    pub fn hash(&self) -> String {
        B64URL.encode(Sha256::digest(self.text.as_bytes()))
    }

    /// Evaluate: the first rule whose conditions all hold decides; none → deny.
    pub fn evaluate(&self, claims: &Claims) -> Result<(), PolicyError> {
        let mut reasons = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let failed = rule
                .conditions
                .iter()
                .find(|c| !c.op.holds(claims.get(&c.claim), &c.value));
            match failed {
                None if rule.permit => return Ok(()),
                None => {
                    return Err(PolicyError::Denied {
                        reason: format!("rule {} denies", i + 1),
                    });
                }
                Some(c) => reasons.push(format!(
                    "rule {}: {} is {} not {}{}",
                    i + 1,
                    c.claim,
                    claims
                        .get(&c.claim)
                        .map(Value::to_string)
                        .unwrap_or_else(|| "absent".into()),
                    match c.op {
                        Cmp::Eq => String::new(),
                        op => format!("{} ", op.symbol()),
                    },
                    c.value
                )),
            }
        }
        if reasons.is_empty() {
            reasons.push("no rules".into());
        }
        Err(PolicyError::Denied {
            reason: reasons.join("; "),
        })
    }
}

/// Sign policy text as an auditor: RS256 JWS with `x5c = [cert]` and `{"AttestationPolicy": b64url(text)}`.
pub fn sign_policy(text: &str, key_pkcs8_pem: &str, cert_der: &[u8]) -> Result<String, PolicyError> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let err = |e: String| PolicyError::Signature { detail: e };
    let key = rsa::PrivateKey::from_pkcs8_pem(key_pkcs8_pem).map_err(|e| err(e.to_string()))?;
    let der = key.to_pkcs1_der().map_err(|e| err(e.to_string()))?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.x5c = Some(vec![B64STD.encode(cert_der)]);
    let payload = serde_json::json!({"AttestationPolicy": B64URL.encode(text.as_bytes())});
    jsonwebtoken::encode(
        &header,
        &payload,
        &jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes()),
    )
    .map_err(|e| err(e.to_string()))
}

/// One `allOf` condition of a release policy: a claim and exactly one of AKV's operators. Build it with
/// [`ClaimCondition::equals`] or [`ClaimCondition::at_least`]; [`ReleasePolicy::from_json`] checks that each
/// condition has exactly one operator and that ordered operators have an integer and `exists` a boolean.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimCondition {
    /// Claim name.
    pub claim: String,
    /// `equals`: expected value (AKV writes strings, also for booleans and numbers); `Null` when the condition
    /// uses another operator.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub equals: Value,
    /// `notEquals`: the claim is present and differs from this value.
    #[serde(rename = "notEquals", default, skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<Value>,
    /// `less`: the claim is an integer below this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub less: Option<Value>,
    /// `lessOrEquals`.
    #[serde(rename = "lessOrEquals", default, skip_serializing_if = "Option::is_none")]
    pub less_or_equals: Option<Value>,
    /// `greater`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greater: Option<Value>,
    /// `greaterOrEquals`: the claim is an integer at least this one (minimum SVNs).
    #[serde(rename = "greaterOrEquals", default, skip_serializing_if = "Option::is_none")]
    pub greater_or_equals: Option<Value>,
    /// `exists`: `true` if the claim must be present, `false` if it must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<Value>,
}

/// The operator of a release-policy condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AkvOp {
    Equals,
    NotEquals,
    Less,
    LessOrEquals,
    Greater,
    GreaterOrEquals,
    Exists,
}

impl AkvOp {
    fn name(self) -> &'static str {
        match self {
            Self::Equals => "equals",
            Self::NotEquals => "notEquals",
            Self::Less => "less",
            Self::LessOrEquals => "lessOrEquals",
            Self::Greater => "greater",
            Self::GreaterOrEquals => "greaterOrEquals",
            Self::Exists => "exists",
        }
    }

    fn ordered(self) -> Option<Cmp> {
        Some(match self {
            Self::Less => Cmp::Lt,
            Self::LessOrEquals => Cmp::Le,
            Self::Greater => Cmp::Gt,
            Self::GreaterOrEquals => Cmp::Ge,
            _ => return None,
        })
    }
}

/// An integer in AKV's JSON: a number without fraction, or a decimal string of one.
fn akv_integer(v: &Value) -> Option<i128> {
    match v {
        Value::String(s) => s.parse().ok(),
        other => json_integer(other),
    }
}

/// `exists`'s value: a boolean, or its JSON text as a string.
fn akv_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

impl ClaimCondition {
    /// `{"claim": claim, "equals": value}`.
    pub fn equals(claim: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            claim: claim.into(),
            equals: value.into(),
            ..Self::default()
        }
    }

    /// `{"claim": claim, "greaterOrEquals": minimum}`: the claim is an integer at least `minimum`.
    pub fn at_least(claim: impl Into<String>, minimum: i64) -> Self {
        Self {
            claim: claim.into(),
            greater_or_equals: Some(Value::from(minimum)),
            ..Self::default()
        }
    }

    /// A condition on `claim` from an operator object, `{"greaterOrEquals": 2}` or `{"equals": "on"}`: exactly
    /// one of AKV's operators with a valid value, nothing else (as a client policy writes one); `None` otherwise.
    pub fn from_operator(claim: &str, operator: &Value) -> Option<Self> {
        let mut object = operator.as_object()?.clone();
        if object.contains_key("claim") {
            return None;
        }
        object.insert("claim".into(), Value::String(claim.to_string()));
        let c: Self = serde_json::from_value(Value::Object(object)).ok()?;
        c.operator().is_ok().then_some(c)
    }

    /// The one operator and its value.
    fn operator(&self) -> Result<(AkvOp, &Value), String> {
        let present: Vec<(AkvOp, &Value)> = [
            (AkvOp::Equals, Some(&self.equals).filter(|v| !v.is_null())),
            (AkvOp::NotEquals, self.not_equals.as_ref()),
            (AkvOp::Less, self.less.as_ref()),
            (AkvOp::LessOrEquals, self.less_or_equals.as_ref()),
            (AkvOp::Greater, self.greater.as_ref()),
            (AkvOp::GreaterOrEquals, self.greater_or_equals.as_ref()),
            (AkvOp::Exists, self.exists.as_ref()),
        ]
        .into_iter()
        .filter_map(|(op, v)| v.map(|v| (op, v)))
        .collect();
        match present.as_slice() {
            [(op, v)] if op.ordered().is_some() && akv_integer(v).is_none() => Err(format!(
                "condition on {}: {} needs an integer, got {v}",
                self.claim,
                op.name()
            )),
            [(AkvOp::Exists, v)] if akv_bool(v).is_none() => Err(format!(
                "condition on {}: exists needs true or false, got {v}",
                self.claim
            )),
            [one] => Ok(*one),
            [] => Err(format!("condition on {} has no operator", self.claim)),
            _ => Err(format!("condition on {} has more than one operator", self.claim)),
        }
    }

    /// Does the condition hold for `claims`? (A condition without exactly one valid operator never holds.)
    pub fn holds(&self, claims: &Claims) -> bool {
        let Ok((op, expected)) = self.operator() else {
            return false;
        };
        let actual = claims.get(&self.claim);
        match (op, actual) {
            (AkvOp::Exists, _) => akv_bool(expected) == Some(actual.is_some()),
            (_, None) => false,
            (AkvOp::Equals, Some(a)) => claim_equals(a, expected),
            (AkvOp::NotEquals, Some(a)) => !claim_equals(a, expected),
            (op, Some(a)) => match (op.ordered(), akv_integer(a), akv_integer(expected)) {
                (Some(cmp), Some(a), Some(e)) => cmp.orders(a, e),
                _ => false,
            },
        }
    }

    /// Why the condition fails for `claims`: `<claim> is <actual> not [<operator> ]<value>`.
    fn failure(&self, claims: &Claims) -> String {
        let actual = claims
            .get(&self.claim)
            .map(Value::to_string)
            .unwrap_or_else(|| "absent".into());
        match self.operator() {
            Ok((AkvOp::Equals, v)) => format!("{} is {actual} not {v}", self.claim),
            Ok((op, v)) => format!("{} is {actual} not {} {v}", self.claim, op.name()),
            Err(e) => e,
        }
    }
}

/// One `anyOf` clause: an authority and the claims its token must carry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseClause {
    /// Attestation service URL (the token's `iss`).
    pub authority: String,
    /// Conditions, all of which must hold.
    #[serde(rename = "allOf")]
    pub all_of: Vec<ClaimCondition>,
}

/// An AKV release policy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasePolicy {
    /// `1.0.0` (or `0.2`).
    pub version: String,
    /// Clauses, any of which suffices.
    #[serde(rename = "anyOf")]
    pub any_of: Vec<ReleaseClause>,
}

impl ReleasePolicy {
    /// Parse and validate: at least one clause, each with an authority and at least one condition.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ReleaseError> {
        let p: Self =
            serde_json::from_slice(bytes).map_err(|e| ReleaseError::InvalidPolicy { detail: e.to_string() })?;
        if p.version != "1.0.0" && p.version != "0.2" {
            return Err(ReleaseError::InvalidPolicy {
                detail: format!("unsupported version {:?}", p.version),
            });
        }
        if p.any_of.is_empty() {
            return Err(ReleaseError::InvalidPolicy {
                detail: "anyOf is empty".into(),
            });
        }
        for c in &p.any_of {
            if c.authority.trim().is_empty() || c.all_of.is_empty() {
                return Err(ReleaseError::InvalidPolicy {
                    detail: "every anyOf clause needs an authority and at least one allOf condition".into(),
                });
            }
            for condition in &c.all_of {
                condition
                    .operator()
                    .map_err(|detail| ReleaseError::InvalidPolicy { detail })?;
            }
        }
        Ok(p)
    }

    /// Check a verified token's claims issued by `issuer`.
    pub fn evaluate(&self, issuer: &str, claims: &Claims) -> Result<(), ReleaseError> {
        let clauses: Vec<&ReleaseClause> = self
            .any_of
            .iter()
            .filter(|c| normalize_issuer(&c.authority) == normalize_issuer(issuer))
            .collect();
        if clauses.is_empty() {
            return Err(ReleaseError::WrongAuthority {
                issuer: issuer.to_string(),
            });
        }
        let mut reasons = Vec::new();
        for clause in clauses {
            match clause.all_of.iter().find(|c| !c.holds(claims)) {
                None => return Ok(()),
                Some(c) => reasons.push(c.failure(claims)),
            }
        }
        Err(ReleaseError::PolicyNotSatisfied {
            reason: reasons.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SEED: &str = r#"version= 1.0;
authorizationrules
{
[type=="x-ms-sevsnpvm-hostdata", value=="abcd"]
&& [type=="x-ms-compliance-status", value=="azure-compliant-uvm"]
=> permit();
};
"#;

    fn claims(v: Value) -> Claims {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn seed_policy_parses_and_evaluates() {
        let p = AttestationPolicy::parse(SEED).unwrap();
        let ok = claims(json!({"x-ms-sevsnpvm-hostdata": "abcd", "x-ms-compliance-status": "azure-compliant-uvm"}));
        p.evaluate(&ok).unwrap();
        let bad = claims(json!({"x-ms-sevsnpvm-hostdata": "abce", "x-ms-compliance-status": "azure-compliant-uvm"}));
        let e = p.evaluate(&bad).unwrap_err().to_string();
        assert!(
            e.contains("attestation policy") && e.contains("x-ms-sevsnpvm-hostdata"),
            "{e}"
        );
    }

    #[test]
    fn booleans_numbers_and_deny_rules() {
        let p = AttestationPolicy::parse(
            "version=1.0; authorizationrules { c:[type==\"dbg\", issuer==\"AttestationService\", value==true] => deny(); [type==\"vmpl\", value==0] => permit(); };",
        )
        .unwrap();
        assert!(p.evaluate(&claims(json!({"dbg": true, "vmpl": 0}))).is_err());
        p.evaluate(&claims(json!({"dbg": false, "vmpl": 0}))).unwrap();
        assert!(p.evaluate(&claims(json!({"dbg": false, "vmpl": 1}))).is_err());
    }

    #[test]
    fn parse_errors_have_offsets() {
        for bad in [
            "",
            "version=2.0;",
            "version=1.0; authorizationrules { [type==\"a\"] => permit(); };",
            "version=1.0; authorizationrules { => allow(); };",
            "version=1.0; authorizationrules { => permit(); }; issuancerules { };",
            "\"unterminated",
        ] {
            let e = AttestationPolicy::parse(bad).unwrap_err();
            assert!(e.to_string().starts_with("policy parse:"), "{bad}: {e}");
        }
    }

    #[test]
    fn non_ascii_input_is_an_error_not_a_panic() {
        // Found by the policy_parser fuzz target: a multi-byte character right after `=`.
        let crash = "version=1.0;\nauthorizationrules {\n[type==\"x\", value=npv}-ho\", v] && [type==\"x-=\u{423} => permit();\n};\n";
        assert!(AttestationPolicy::parse(crash).is_err());
        assert!(AttestationPolicy::parse("version=1.0; authorizationrules { =\u{423}=> permit(); };").is_err());
        // An escaped multi-byte character inside a string is kept whole.
        let p = AttestationPolicy::parse(
            "version=1.0; authorizationrules { [type==\"c\", value==\"\\\u{423}\"] => permit(); };",
        )
        .unwrap();
        p.evaluate(&claims(json!({"c": "\u{423}"}))).unwrap();
    }

    #[test]
    fn ordered_comparisons_accept_at_and_above_the_minimum_and_refuse_below() {
        let p = AttestationPolicy::parse(
            "version=1.0; authorizationrules { [type==\"x-ms-sevsnpvm-snpfw-svn\", value>=22] \
             && [type==\"x-ms-sevsnpvm-microcode-svn\", value > 218] && [type==\"x-cinfer-report-version\", value<=5] \
             && [type==\"x-ms-sevsnpvm-tee-svn\", value<1] && [type==\"x-ms-sevsnpvm-migration-allowed\", value!=true] \
             => permit(); };",
        )
        .unwrap();
        let good = json!({"x-ms-sevsnpvm-snpfw-svn": 22, "x-ms-sevsnpvm-microcode-svn": 219,
                          "x-cinfer-report-version": 5, "x-ms-sevsnpvm-tee-svn": 0,
                          "x-ms-sevsnpvm-migration-allowed": false});
        p.evaluate(&claims(good.clone())).unwrap();
        let with = |k: &str, v: Value| {
            let mut c = claims(good.clone());
            c.insert(k.into(), v);
            c
        };
        let e = p
            .evaluate(&with("x-ms-sevsnpvm-snpfw-svn", json!(21)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x-ms-sevsnpvm-snpfw-svn is 21 not >= 22"), "{e}");
        for (k, v) in [
            ("x-ms-sevsnpvm-microcode-svn", json!(218)),
            ("x-ms-sevsnpvm-microcode-svn", json!("219")), // ordered comparisons need an integer claim
            ("x-cinfer-report-version", json!(6)),
            ("x-ms-sevsnpvm-tee-svn", json!(1)),
            ("x-ms-sevsnpvm-migration-allowed", json!(true)),
        ] {
            assert!(p.evaluate(&with(k, v.clone())).is_err(), "{k} = {v}");
        }
        let mut absent = claims(good);
        absent.remove("x-ms-sevsnpvm-migration-allowed");
        assert!(
            p.evaluate(&absent).is_err(),
            "an absent claim satisfies no condition, != included"
        );
        for bad in [
            "version=1.0; authorizationrules { [type==\"a\", value>=\"22\"] => permit(); };",
            "version=1.0; authorizationrules { [type==\"a\", value>=true] => permit(); };",
            "version=1.0; authorizationrules { [type==\"a\", value>=1.5] => permit(); };",
            "version=1.0; authorizationrules { [type>=\"a\", value==1] => permit(); };",
            "version=1.0; authorizationrules { [type==\"a\", issuer!=\"x\", value==1] => permit(); };",
            "version=1.0; authorizationrules { [type==\"a\", value=<1] => permit(); };",
            "version=1.0; authorizationrules { [type==\"a\", value!1] => permit(); };",
        ] {
            let e = AttestationPolicy::parse(bad).unwrap_err();
            assert!(e.to_string().starts_with("policy parse:"), "{bad}: {e}");
        }
    }

    #[test]
    fn release_policy_ordered_and_exists_operators() {
        let p = ReleasePolicy::from_json(
            br#"{"version":"1.0.0","anyOf":[{"authority":"https://maa.example","allOf":[
                {"claim":"x-ms-sevsnpvm-microcode-svn","greaterOrEquals":219},
                {"claim":"x-ms-sevsnpvm-snpfw-svn","greater":"21"},
                {"claim":"x-cinfer-report-version","lessOrEquals":5},
                {"claim":"x-ms-sevsnpvm-tee-svn","less":1},
                {"claim":"x-ms-sevsnpvm-migration-allowed","notEquals":"true"},
                {"claim":"x-ms-sevsnpvm-hostdata","exists":true},
                {"claim":"x-debug","exists":false}]}]}"#,
        )
        .unwrap();
        let good = json!({"x-ms-sevsnpvm-microcode-svn": 219, "x-ms-sevsnpvm-snpfw-svn": 22,
                          "x-cinfer-report-version": 3, "x-ms-sevsnpvm-tee-svn": 0,
                          "x-ms-sevsnpvm-migration-allowed": false, "x-ms-sevsnpvm-hostdata": "ab"});
        p.evaluate("https://maa.example", &claims(good.clone())).unwrap();
        let with = |k: &str, v: Value| {
            let mut c = claims(good.clone());
            c.insert(k.into(), v);
            c
        };
        let e = p
            .evaluate("https://maa.example", &with("x-ms-sevsnpvm-microcode-svn", json!(211)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x-ms-sevsnpvm-microcode-svn is 211 not greaterOrEquals 219"),
            "{e}"
        );
        for (k, v) in [
            ("x-ms-sevsnpvm-snpfw-svn", json!(21)),
            ("x-cinfer-report-version", json!(6)),
            ("x-ms-sevsnpvm-tee-svn", json!(1)),
            ("x-ms-sevsnpvm-migration-allowed", json!(true)),
            ("x-debug", json!(false)),
        ] {
            assert!(
                p.evaluate("https://maa.example", &with(k, v.clone())).is_err(),
                "{k} = {v}"
            );
        }
        let mut absent = claims(good);
        absent.remove("x-ms-sevsnpvm-hostdata");
        assert!(p.evaluate("https://maa.example", &absent).is_err());
        // Exactly one operator, of the right type; serializing keeps AKV's names.
        for bad in [
            r#"{"claim":"a"}"#,
            r#"{"claim":"a","equals":"1","greater":1}"#,
            r#"{"claim":"a","greaterOrEquals":"x"}"#,
            r#"{"claim":"a","less":1.5}"#,
            r#"{"claim":"a","exists":"yes"}"#,
            r#"{"claim":"a","greaterOrEqual":1}"#,
        ] {
            let doc = format!(r#"{{"version":"1.0.0","anyOf":[{{"authority":"x","allOf":[{bad}]}}]}}"#);
            assert!(ReleasePolicy::from_json(doc.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&ClaimCondition::at_least("x-ms-sevsnpvm-snpfw-svn", 23)).unwrap(),
            r#"{"claim":"x-ms-sevsnpvm-snpfw-svn","greaterOrEquals":23}"#
        );
        assert_eq!(
            serde_json::to_string(&ClaimCondition::equals("x-ms-sevsnpvm-vmpl", "0")).unwrap(),
            r#"{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}"#
        );
    }

    #[test]
    fn operator_objects_become_conditions_and_other_objects_do_not() {
        let c = ClaimCondition::from_operator("x-cinfer-gpu-count", &json!({"greaterOrEquals": 2})).unwrap();
        assert_eq!(c, ClaimCondition::at_least("x-cinfer-gpu-count", 2));
        assert!(c.holds(&claims(json!({"x-cinfer-gpu-count": 2}))));
        assert!(!c.holds(&claims(json!({"x-cinfer-gpu-count": 1}))));
        let eq = ClaimCondition::from_operator("m", &json!({"equals": "on"})).unwrap();
        assert!(eq.holds(&claims(json!({"m": "on"}))));
        for not_one in [
            json!({"kty": "RSA", "x5c": ["AA=="]}),
            json!({"greaterOrEquals": "many"}),
            json!({"equals": 1, "less": 2}),
            json!({"claim": "other", "equals": 1}),
            json!({}),
            json!(3),
        ] {
            assert_eq!(ClaimCondition::from_operator("m", &not_one), None, "{not_one}");
        }
    }

    #[test]
    fn release_policy_akv_semantics() {
        let p = ReleasePolicy::from_json(
            br#"{"version":"1.0.0","anyOf":[{"authority":"https://maa.example/","allOf":[{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"},{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}]}]}"#,
        )
        .unwrap();
        let c = claims(json!({"x-ms-sevsnpvm-is-debuggable": false, "x-ms-sevsnpvm-vmpl": 0}));
        p.evaluate("https://maa.example", &c).unwrap();
        let e = p.evaluate("https://other.example", &c).unwrap_err();
        assert!(matches!(e, ReleaseError::WrongAuthority { .. }), "{e}");
        let c2 = claims(json!({"x-ms-sevsnpvm-is-debuggable": true, "x-ms-sevsnpvm-vmpl": 0}));
        let e = p.evaluate("https://maa.example", &c2).unwrap_err();
        assert!(e.to_string().starts_with("release policy: not satisfied"), "{e}");
        assert!(ReleasePolicy::from_json(br#"{"version":"1.0.0","anyOf":[]}"#).is_err());
        assert!(ReleasePolicy::from_json(br#"{"version":"1.0.0","anyOf":[{"authority":"x","allOf":[]}]}"#).is_err());
    }
}
