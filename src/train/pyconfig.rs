//! nanoGPT-style config files (`config/train_shakespeare_char.py`): one `key = value` per line,
//! the value a Python literal (`True`/`False`, a quoted string, a number) or arithmetic on
//! numbers and earlier keys (`64 * 4`, `max_iters`, `(1 + 2) / 3`, `2 ** 10`, `7 // 2`), comments
//! after `#`. Anything else (imports, calls, lists) is refused with its line number.
//!
//! nanoGPT's keys that concern only its PyTorch script (logging, wandb, torch.compile, the
//! device and dtype, `eval_iters`) are read and ignored; `init_from = 'scratch'` means no
//! `init_from`. The other keys go through the config like a TOML file's, nanoGPT's names
//! included (see `config::NANOGPT_ALIASES`).

use std::collections::HashMap;

use super::config::ConfigError;

/// nanoGPT keys that have no meaning in gradscope and are ignored.
pub const IGNORED: &[&str] = &[
    "wandb_log", "wandb_project", "wandb_run_name", "log_interval", "always_save_checkpoint", "compile", "device", "dtype",
    "backend", "eval_only", "eval_iters",
];

#[derive(Clone, Debug, PartialEq)]
enum Val {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
}

impl Val {
    fn num(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Float(f) => Some(*f),
            Val::Bool(b) => Some(*b as i64 as f64),
            Val::Str(_) => None,
        }
    }
    fn toml(self) -> toml::Value {
        match self {
            Val::Int(i) => toml::Value::Integer(i),
            Val::Float(f) => toml::Value::Float(f),
            Val::Str(s) => toml::Value::String(s),
            Val::Bool(b) => toml::Value::Boolean(b),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(Val),
    Str(String),
    Name(String),
    Op(&'static str),
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            break;
        } else if c == '\'' || c == '"' {
            let mut j = i + 1;
            let mut text = String::new();
            while j < b.len() && b[j] != c {
                if b[j] == '\\' {
                    j += 1;
                    match b.get(j) {
                        Some('n') => text.push('\n'),
                        Some('t') => text.push('\t'),
                        Some(&x @ ('\\' | '\'' | '"')) => text.push(x),
                        _ => return Err("an escape other than \\n, \\t, \\\\, \\' or \\\"".into()),
                    }
                } else {
                    text.push(b[j]);
                }
                j += 1;
            }
            if j >= b.len() {
                return Err("a string without its closing quote".into());
            }
            out.push(Tok::Str(text));
            i = j + 1;
        } else if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == '.' || b[j] == '_' || ((b[j] == '-' || b[j] == '+') && matches!(b[j - 1], 'e' | 'E'))) {
                j += 1;
            }
            let text: String = b[i..j].iter().filter(|&&c| c != '_').collect();
            let v = if text.contains(['.', 'e', 'E']) {
                Val::Float(text.parse().map_err(|_| format!("{text:?} is not a number"))?)
            } else {
                Val::Int(text.parse().map_err(|_| format!("{text:?} is not a number (or too large)"))?)
            };
            out.push(Tok::Num(v));
            i = j;
        } else if c.is_alphabetic() || c == '_' {
            let mut j = i;
            while j < b.len() && (b[j].is_alphanumeric() || b[j] == '_') {
                j += 1;
            }
            out.push(Tok::Name(b[i..j].iter().collect()));
            i = j;
        } else {
            let two: String = b[i..(i + 2).min(b.len())].iter().collect();
            let op = match two.as_str() {
                "**" => "**",
                "//" => "//",
                _ => match c {
                    '+' => "+",
                    '-' => "-",
                    '*' => "*",
                    '/' => "/",
                    '%' => "%",
                    '(' => "(",
                    ')' => ")",
                    '=' => "=",
                    _ => return Err(format!("unexpected {c:?}")),
                },
            };
            i += op.len();
            out.push(Tok::Op(op));
        }
    }
    Ok(out)
}

/// A recursive-descent evaluator: sum := term (('+'|'-') term)*; term := unary (('*'|'/'|'//'|'%') unary)*;
/// unary := '-' unary | '+' unary | power; power := atom ('**' unary)?
struct Parser<'a> {
    toks: &'a [Tok],
    at: usize,
    vars: &'a HashMap<String, Val>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }
    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.at += 1;
            true
        } else {
            false
        }
    }
    fn sum(&mut self) -> Result<Val, String> {
        let mut v = self.term()?;
        loop {
            if self.eat("+") {
                let r = self.term()?;
                v = match (v, r) {
                    (Val::Str(a), Val::Str(b)) => Val::Str(a + &b),
                    (a, b) => arith(a, b, "+")?,
                };
            } else if self.eat("-") {
                let r = self.term()?;
                v = arith(v, r, "-")?;
            } else {
                return Ok(v);
            }
        }
    }
    fn term(&mut self) -> Result<Val, String> {
        let mut v = self.unary()?;
        loop {
            let op = ["*", "//", "/", "%"].into_iter().find(|op| self.eat(op));
            match op {
                Some(op) => {
                    let r = self.unary()?;
                    v = arith(v, r, op)?;
                }
                None => return Ok(v),
            }
        }
    }
    fn unary(&mut self) -> Result<Val, String> {
        if self.eat("-") {
            let v = self.unary()?;
            return arith(Val::Int(0), v, "-");
        }
        if self.eat("+") {
            return self.unary();
        }
        let base = self.atom()?;
        if self.eat("**") {
            let e = self.unary()?;
            return arith(base, e, "**");
        }
        Ok(base)
    }
    fn atom(&mut self) -> Result<Val, String> {
        let t = self.peek().cloned().ok_or("a value is missing")?;
        self.at += 1;
        match t {
            Tok::Num(v) => Ok(v),
            Tok::Str(s) => Ok(Val::Str(s)),
            Tok::Name(n) => match n.as_str() {
                "True" => Ok(Val::Bool(true)),
                "False" => Ok(Val::Bool(false)),
                _ => {
                    if matches!(self.peek(), Some(Tok::Op("(")) ) {
                        return Err(format!("a call ({n}(...)); only literals and arithmetic are read"));
                    }
                    self.vars.get(&n).cloned().ok_or(format!("{n} is not a literal nor a key set above"))
                }
            },
            Tok::Op("(") => {
                let v = self.sum()?;
                if !self.eat(")") {
                    return Err("a `(` without its `)`".into());
                }
                Ok(v)
            }
            Tok::Op(o) => Err(format!("unexpected `{o}`")),
        }
    }
}

fn arith(a: Val, b: Val, op: &str) -> Result<Val, String> {
    if let (Val::Int(x), Val::Int(y)) = (&a, &b) {
        let (x, y) = (*x, *y);
        let r = match op {
            "+" => x.checked_add(y),
            "-" => x.checked_sub(y),
            "*" => x.checked_mul(y),
            // Python's floor division and modulo (the sign of the divisor)
            "//" if y != 0 => Some(x / y - i64::from(x % y != 0 && ((x < 0) != (y < 0)))),
            "%" if y != 0 => Some(((x % y) + y) % y),
            "**" if (0..64).contains(&y) => x.checked_pow(y as u32),
            "/" => return if y == 0 { Err("division by zero".into()) } else { Ok(Val::Float(x as f64 / y as f64)) },
            "//" | "%" => return Err("division by zero".into()),
            _ => None,
        };
        if let Some(r) = r {
            return Ok(Val::Int(r));
        }
        if op != "**" {
            return Err(format!("integer overflow in `{op}`"));
        }
    }
    let (x, y) = match (a.num(), b.num()) {
        (Some(x), Some(y)) => (x, y),
        _ => return Err(format!("`{op}` on a string")),
    };
    let r = match op {
        "+" => x + y,
        "-" => x - y,
        "*" => x * y,
        "/" => x / y,
        "//" => (x / y).floor(),
        "%" => x - y * (x / y).floor(),
        _ => x.powf(y),
    };
    if !r.is_finite() {
        return Err(format!("`{op}` gives {r}"));
    }
    Ok(Val::Float(r))
}

/// The keys of a nanoGPT-style `.py` config; `name` names the file in errors.
pub fn parse(text: &str, name: &str) -> Result<toml::Table, ConfigError> {
    let mut vars: HashMap<String, Val> = HashMap::new();
    let mut table = toml::Table::new();
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| ConfigError::Parse(format!("{name}:{}: {m}: `{}` (a nanoGPT config line is `key = value`, the value a literal or arithmetic)", n + 1, line.trim()));
        let toks = lex(line).map_err(err)?;
        if toks.is_empty() {
            continue;
        }
        let key = match (&toks[0], toks.get(1)) {
            (Tok::Name(k), Some(Tok::Op("="))) => k.clone(),
            _ => return Err(err("not an assignment".into())),
        };
        let mut p = Parser { toks: &toks[2..], at: 0, vars: &vars };
        let v = p.sum().map_err(err)?;
        if p.at != p.toks.len() {
            return Err(err("more after the value".into()));
        }
        vars.insert(key.clone(), v.clone());
        if IGNORED.contains(&key.as_str()) {
            continue;
        }
        match (key.as_str(), &v) {
            ("init_from", Val::Str(s)) if s == "scratch" => continue,
            ("init_from", Val::Str(s)) if s == "resume" || s.starts_with("gpt2") => {
                return Err(err(format!(
                    "init_from = '{s}': name a file instead (a gradscope checkpoint, nanoGPT safetensors or a Hugging Face GPT-2 folder); `--resume CKPT` resumes"
                )));
            }
            ("dataset", _) => return Err(err("`dataset`: gradscope reads `data = 'PATH'` (a text file, or a folder that `gradscope prepare` wrote)".into())),
            _ => {}
        }
        table.insert(key, v.toml());
    }
    Ok(table)
}
