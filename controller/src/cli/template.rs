//! A small subset of Go's text/template, enough for docker-style `--format` strings over the
//! JSON views the commands print: literal text with `{{.Field.Sub}}`, `{{.}}`, `{{json .X}}`,
//! `{{index .X "key"}}`, `{{join .X ", "}}`, `{{upper .X}}`, `{{lower .X}}`, and Go's `{{-`/`-}}`
//! whitespace trimming. Control structures (`range`, `if`) are refused with a clear message
//! rather than half-implemented. Values print like Go prints them (strings bare, `<no value>` for
//! null, `[a b]` for lists, `map[k:v]` for objects). Hand-written: no maintained Rust crate
//! implements Go templates, and docker users expect this syntax.

use serde_json::Value;

/// Why a template could not be parsed or applied; the message is shown as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template: {0}")]
pub struct TemplateError(String);

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Path(Vec<String>),
    Str(String),
    Int(i64),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Action {
        func: Option<String>,
        args: Vec<Arg>,
    },
}

/// A parsed template, applied to any number of values.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

fn tokenize(src: &str) -> Result<Vec<String>, TemplateError> {
    let mut toks = Vec::new();
    let mut chars = src.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::from("\"");
            let mut closed = false;
            while let Some(ch) = chars.next() {
                match ch {
                    '\\' => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some(o) => s.push(o),
                        None => break,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    o => s.push(o),
                }
            }
            if !closed {
                return Err(TemplateError(format!(
                    "unterminated string in {{{{{src}}}}}"
                )));
            }
            toks.push(s);
        } else {
            let mut s = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                s.push(ch);
                chars.next();
            }
            toks.push(s);
        }
    }
    Ok(toks)
}

fn parse_arg(tok: &str, action: &str) -> Result<Arg, TemplateError> {
    if let Some(s) = tok.strip_prefix('"') {
        return Ok(Arg::Str(s.to_string()));
    }
    if tok == "." {
        return Ok(Arg::Path(Vec::new()));
    }
    if let Some(p) = tok.strip_prefix('.') {
        if p.split('.').any(str::is_empty) {
            return Err(TemplateError(format!(
                "bad field path {tok:?} in {{{{{action}}}}}"
            )));
        }
        return Ok(Arg::Path(p.split('.').map(str::to_string).collect()));
    }
    if let Ok(n) = tok.parse::<i64>() {
        return Ok(Arg::Int(n));
    }
    Err(TemplateError(format!(
        "unexpected {tok:?} in {{{{{action}}}}} (expected a field like .State.Status)"
    )))
}

const FUNCS: &[&str] = &["json", "index", "join", "upper", "lower"];

impl Template {
    /// Parses `src`; errors name the offending action.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let mut nodes = Vec::new();
        let mut rest = src;
        let mut trim_next_text = false;
        while let Some(open) = rest.find("{{") {
            let mut text = rest[..open].to_string();
            if trim_next_text {
                text = text.trim_start().to_string();
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                return Err(TemplateError(format!("unclosed action in {src:?}")));
            };
            let mut inner = &after[..close];
            if let Some(i) = inner.strip_prefix('-') {
                if i.starts_with(char::is_whitespace) || i.is_empty() {
                    text = text.trim_end().to_string();
                    inner = i;
                }
            }
            trim_next_text = false;
            if let Some(i) = inner.strip_suffix('-') {
                if i.ends_with(char::is_whitespace) || i.is_empty() {
                    trim_next_text = true;
                    inner = i;
                }
            }
            if !text.is_empty() {
                nodes.push(Node::Text(text));
            }
            let inner = inner.trim();
            let toks = tokenize(inner)?;
            let Some(first) = toks.first() else {
                return Err(TemplateError("empty action {{}}".into()));
            };
            let node = if first.starts_with('.') {
                if toks.len() != 1 {
                    return Err(TemplateError(format!(
                        "unexpected arguments in {{{{{inner}}}}}"
                    )));
                }
                Node::Action {
                    func: None,
                    args: vec![parse_arg(first, inner)?],
                }
            } else if FUNCS.contains(&first.as_str()) {
                let args = toks[1..]
                    .iter()
                    .map(|t| parse_arg(t, inner))
                    .collect::<Result<Vec<_>, _>>()?;
                let want = match first.as_str() {
                    "json" | "upper" | "lower" => 1..=1,
                    "join" => 2..=2,
                    _ => 2..=usize::MAX,
                };
                if !want.contains(&args.len()) {
                    return Err(TemplateError(format!(
                        "wrong number of arguments for {first} in {{{{{inner}}}}}"
                    )));
                }
                Node::Action {
                    func: Some(first.clone()),
                    args,
                }
            } else {
                return Err(TemplateError(format!(
                    "unsupported action {{{{{inner}}}}} (supported: {{{{.Field}}}}, {})",
                    FUNCS.join(", ")
                )));
            };
            nodes.push(node);
            rest = &after[close + 2..];
        }
        let mut text = rest.to_string();
        if trim_next_text {
            text = text.trim_start().to_string();
        }
        if !text.is_empty() {
            nodes.push(Node::Text(text));
        }
        Ok(Template { nodes })
    }

    /// Renders the template against one value.
    pub fn render(&self, v: &Value) -> Result<String, TemplateError> {
        let mut out = String::new();
        for n in &self.nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Action { func, args } => {
                    let vals = args
                        .iter()
                        .map(|a| eval(a, v))
                        .collect::<Result<Vec<_>, _>>()?;
                    match func.as_deref() {
                        None => out.push_str(&go_print(&vals[0])),
                        Some("json") => out.push_str(
                            &serde_json::to_string(&vals[0]).unwrap_or_else(|_| "null".into()),
                        ),
                        Some("upper") => out.push_str(&go_print(&vals[0]).to_uppercase()),
                        Some("lower") => out.push_str(&go_print(&vals[0]).to_lowercase()),
                        Some("join") => {
                            let sep = go_print(&vals[1]);
                            let items: Vec<String> = match &vals[0] {
                                Value::Array(a) => a.iter().map(go_print).collect(),
                                Value::Null => Vec::new(),
                                other => vec![go_print(other)],
                            };
                            out.push_str(&items.join(&sep));
                        }
                        Some("index") => {
                            let mut cur = vals[0].clone();
                            for k in &vals[1..] {
                                cur = match (&cur, k) {
                                    (Value::Object(m), Value::String(s)) => {
                                        m.get(s).cloned().unwrap_or(Value::Null)
                                    }
                                    (Value::Array(a), Value::Number(n)) => n
                                        .as_u64()
                                        .and_then(|i| a.get(i as usize))
                                        .cloned()
                                        .ok_or_else(|| {
                                            TemplateError(format!("index {n} out of range"))
                                        })?,
                                    (Value::Null, _) => Value::Null,
                                    _ => {
                                        return Err(TemplateError(format!(
                                            "cannot index {} with {k}",
                                            kind(&cur)
                                        )))
                                    }
                                };
                            }
                            out.push_str(&go_print(&cur));
                        }
                        Some(f) => return Err(TemplateError(format!("unknown function {f}"))),
                    }
                }
            }
        }
        Ok(out)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn eval(a: &Arg, root: &Value) -> Result<Value, TemplateError> {
    match a {
        Arg::Str(s) => Ok(Value::String(s.clone())),
        Arg::Int(n) => Ok(Value::from(*n)),
        Arg::Path(p) => {
            let mut cur = root;
            for (i, k) in p.iter().enumerate() {
                match cur {
                    Value::Object(m) => match m.get(k) {
                        Some(v) => cur = v,
                        None => {
                            let mut keys: Vec<&str> = m.keys().map(String::as_str).collect();
                            keys.sort_unstable();
                            return Err(TemplateError(format!(
                                "no field {:?} at .{} (fields: {})",
                                k,
                                p[..i].join("."),
                                keys.join(", ")
                            )));
                        }
                    },
                    Value::Null => return Ok(Value::Null),
                    other => {
                        return Err(TemplateError(format!(
                            "can't evaluate field {k} in {}",
                            kind(other)
                        )))
                    }
                }
            }
            Ok(cur.clone())
        }
    }
}

/// Prints a value the way Go's fmt prints the decoded JSON docker templates run over.
pub fn go_print(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(go_print).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{k}:{}", go_print(&m[k])))
                .collect();
            format!("map[{}]", items.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(t: &str, v: &Value) -> String {
        Template::parse(t).unwrap().render(v).unwrap()
    }

    fn doc() -> Value {
        json!({
            "Id": "abc",
            "Name": "/web",
            "State": {"Status": "running", "ExitCode": 0, "Running": true, "Health": null},
            "Config": {"Labels": {"tier": "front"}, "Env": ["A=1", "B=2"]},
            "Ports": [],
        })
    }

    #[test]
    fn fields_and_text() {
        let d = doc();
        assert_eq!(r("{{.State.Status}}", &d), "running");
        assert_eq!(r("{{.State.ExitCode}}", &d), "0");
        assert_eq!(r("{{.State.Running}}", &d), "true");
        assert_eq!(r("{{.State.Health}}", &d), "<no value>");
        assert_eq!(r("{{.State.Health.Status}}", &d), "<no value>");
        assert_eq!(
            r("{{ .Name }} is {{.State.Status}}\n", &d),
            "/web is running\n"
        );
        assert_eq!(r("plain", &d), "plain");
        assert_eq!(r("{{.Config.Env}}", &d), "[A=1 B=2]");
        assert_eq!(r("{{.Config.Labels}}", &d), "map[tier:front]");
        assert_eq!(r("{{.}}", &json!("x")), "x");
    }

    #[test]
    fn functions() {
        let d = doc();
        assert_eq!(
            r("{{json .State}}", &d),
            r#"{"ExitCode":0,"Health":null,"Running":true,"Status":"running"}"#
        );
        assert_eq!(r("{{json .Ports}}", &d), "[]");
        assert_eq!(r("{{index .Config.Labels \"tier\"}}", &d), "front");
        assert_eq!(r("{{index .Config.Labels \"nope\"}}", &d), "<no value>");
        assert_eq!(r("{{index .Config.Env 1}}", &d), "B=2");
        assert_eq!(r("{{join .Config.Env \",\"}}", &d), "A=1,B=2");
        assert_eq!(r("{{upper .State.Status}}", &d), "RUNNING");
        assert_eq!(r("{{lower .Name}}", &d), "/web");
    }

    #[test]
    fn trimming() {
        let d = doc();
        assert_eq!(r("a  {{- .Id -}}  b", &d), "aabcb");
        assert_eq!(r(" {{- .Id -}} ", &d), "abc");
    }

    #[test]
    fn errors() {
        let d = doc();
        let pe = |t: &str| Template::parse(t).unwrap_err().to_string();
        let re = |t: &str| {
            Template::parse(t)
                .unwrap()
                .render(&d)
                .unwrap_err()
                .to_string()
        };
        assert!(pe("{{.State").contains("unclosed action"));
        assert!(pe("{{}}").contains("empty action"));
        // As in Go, a trim marker needs a space after it.
        assert!(pe("{{-.Id}}").contains("unsupported action"));
        assert!(pe("{{range .Ports}}x{{end}}").contains("unsupported action {{range .Ports}}"));
        assert!(pe("{{json}}").contains("wrong number of arguments for json"));
        assert!(pe("{{json .A .B}}").contains("wrong number"));
        assert!(pe("{{.A .B}}").contains("unexpected arguments"));
        assert!(pe("{{json A}}").contains("unexpected \"A\""));
        assert!(pe("{{..A}}").contains("bad field path"));
        assert!(pe("{{index .A \"x}}").contains("unterminated string"));
        assert!(re("{{.Stat.Status}}").contains("no field \"Stat\""));
        assert!(re("{{.State.Nope}}").contains("fields: ExitCode, Health, Running, Status"));
        assert!(re("{{.Id.X}}").contains("can't evaluate field X in a string"));
        assert!(re("{{index .Config.Env 5}}").contains("out of range"));
        assert!(re("{{index .Id \"x\"}}").contains("cannot index a string"));
    }
}
