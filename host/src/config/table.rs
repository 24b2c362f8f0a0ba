//! A small reader over toml's spanned tree that records every problem instead of
//! stopping at the first, the way serde's derive would.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::Diagnostics;
use crate::base::Duration;

pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Everything a reader needs besides the value itself.
pub(crate) struct Ctx<'s> {
    pub diag: Diagnostics<'s>,
    pub env: &'s dyn Fn(&str) -> Option<String>,
}

/// A string value after `${VAR}` expansion, with the span of its literal.
#[derive(Debug, Clone)]
pub(crate) struct Str {
    pub value: String,
    pub span: Range<usize>,
}

/// One TOML table being read: tracks which keys were used so unknown ones are reported.
pub(crate) struct TableReader<'a, 'i> {
    table: &'a DeTable<'i>,
    pub span: Range<usize>,
    pub scope: String,
    used: Vec<&'a str>,
}

impl<'a, 'i> TableReader<'a, 'i> {
    pub fn new(value: &'a Value<'i>, scope: impl Into<String>, ctx: &mut Ctx<'_>) -> Option<Self> {
        let scope = scope.into();
        match value.get_ref() {
            DeValue::Table(table) => Some(Self { table, span: value.span(), scope, used: Vec::new() }),
            other => {
                ctx.diag.error(value.span(), scope, format!("expected a table, found {}", other.type_str()));
                None
            }
        }
    }

    pub fn field(&self, key: &str) -> String {
        if self.scope.is_empty() { key.to_owned() } else { format!("{}.{key}", self.scope) }
    }

    pub fn has(&self, key: &str) -> bool {
        self.table.get(key).is_some()
    }

    pub fn get(&mut self, key: &str) -> Option<&'a Value<'i>> {
        let (k, v) = self.table.get_key_value(key)?;
        self.used.push(k.get_ref().as_ref());
        Some(v)
    }

    fn missing(&self, ctx: &mut Ctx<'_>, key: &str) {
        ctx.diag.error(self.span.clone(), self.field(key), format!("missing required field `{key}`"));
    }

    fn wrong_type(&self, ctx: &mut Ctx<'_>, key: &str, value: &Value<'_>, expected: &str) {
        let found = value.get_ref().type_str();
        ctx.diag.error(value.span(), self.field(key), format!("expected {expected}, found {found}"));
    }

    pub fn string(&mut self, ctx: &mut Ctx<'_>, key: &str) -> Option<Str> {
        let value = self.get(key)?;
        let Some(text) = value.get_ref().as_str() else {
            self.wrong_type(ctx, key, value, "a string");
            return None;
        };
        match super::env::expand(text, ctx.env) {
            Ok(expanded) => Some(Str { value: expanded, span: value.span() }),
            Err(message) => {
                ctx.diag.error(value.span(), self.field(key), message);
                None
            }
        }
    }

    pub fn required_string(&mut self, ctx: &mut Ctx<'_>, key: &str) -> Option<Str> {
        if !self.has(key) {
            self.missing(ctx, key);
            return None;
        }
        self.string(ctx, key)
    }

    /// A string parsed by `parse`; a parse error is reported at the value.
    pub fn parsed<T>(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.string(ctx, key)?;
        match parse(&s.value) {
            Ok(v) => Some(v),
            Err(message) => {
                ctx.diag.error(s.span, self.field(key), message);
                None
            }
        }
    }

    pub fn duration(&mut self, ctx: &mut Ctx<'_>, key: &str) -> Option<Duration> {
        self.parsed(ctx, key, |s| Duration::try_from(s))
    }

    pub fn bool(&mut self, ctx: &mut Ctx<'_>, key: &str) -> Option<bool> {
        let value = self.get(key)?;
        match value.get_ref().as_bool() {
            Some(b) => Some(b),
            None => {
                self.wrong_type(ctx, key, value, "true or false");
                None
            }
        }
    }

    /// A positive integer no larger than `max`.
    pub fn count(&mut self, ctx: &mut Ctx<'_>, key: &str, max: u64) -> Option<u64> {
        self.count_from(ctx, key, 1, max)
    }

    /// An integer from `min` to `max`.
    pub fn count_from(&mut self, ctx: &mut Ctx<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        let value = self.get(key)?;
        let Some(int) = value.get_ref().as_integer() else {
            self.wrong_type(ctx, key, value, "an integer");
            return None;
        };
        match i64::from_str_radix(int.as_str().replace('_', "").as_str(), int.radix()) {
            Ok(n) if n >= 0 && n as u64 >= min && n as u64 <= max => Some(n as u64),
            _ => {
                let msg = format!("expected an integer from {min} to {max}, found {}", int.as_str());
                ctx.diag.error(value.span(), self.field(key), msg);
                None
            }
        }
    }

    pub fn array(&mut self, ctx: &mut Ctx<'_>, key: &str) -> Option<&'a [Value<'i>]> {
        let value = self.get(key)?;
        match value.get_ref().as_array() {
            Some(items) => Some(&items[..]),
            None => {
                self.wrong_type(ctx, key, value, "an array");
                None
            }
        }
    }

    /// Strings in an array, each expanded; empty results are dropped.
    pub fn strings(&mut self, ctx: &mut Ctx<'_>, key: &str) -> Option<Vec<Str>> {
        let items = self.array(ctx, key)?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("{}[{i}]", self.field(key));
            let Some(text) = item.get_ref().as_str() else {
                let found = item.get_ref().type_str();
                ctx.diag.error(item.span(), field, format!("expected a string, found {found}"));
                continue;
            };
            match super::env::expand(text, ctx.env) {
                Ok(v) if v.trim().is_empty() => {}
                Ok(v) => out.push(Str { value: v, span: item.span() }),
                Err(message) => ctx.diag.error(item.span(), field, message),
            }
        }
        Some(out)
    }

    /// Reports every key that was not read, naming the keys that are allowed here.
    pub fn finish(self, ctx: &mut Ctx<'_>, known: &[&str]) {
        self.finish_with(ctx, known, &|_| None);
    }

    /// As `finish`, with `misplaced` explaining keys that are valid elsewhere.
    pub fn finish_with(self, ctx: &mut Ctx<'_>, known: &[&str], misplaced: &dyn Fn(&str) -> Option<String>) {
        for (key, _) in self.table.iter() {
            let name: &str = key.get_ref().as_ref();
            if self.used.contains(&name) {
                continue;
            }
            let message = match misplaced(name) {
                // Empty: the key cannot be judged here and another error already covers it.
                Some(m) if m.is_empty() => continue,
                Some(m) => m,
                None => format!("unknown field `{name}`, expected one of: {}", known.join(", ")),
            };
            ctx.diag.error(key.span(), self.field(name), message);
        }
    }
}
