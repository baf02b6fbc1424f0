//! Command-line options: `--name value`, `--name=value` and bare flags,
//! read by name with a default. Unknown or unused options are errors, so a
//! typo never silently runs the default benchmark.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context as _};

pub struct Opts {
    values: BTreeMap<String, String>,
    flags: BTreeSet<String>,
    read: RefCell<BTreeSet<String>>,
}

impl Opts {
    /// `flags` are the options that take no value.
    pub fn parse(argv: &[String], flags: &[&str]) -> anyhow::Result<Opts> {
        let mut values = BTreeMap::new();
        let mut set = BTreeSet::new();
        let mut it = argv.iter();
        while let Some(arg) = it.next() {
            let Some(body) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?} (options are --name value)");
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (body, None),
            };
            if flags.contains(&name) {
                set.insert(name.to_owned());
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("--{name} needs a value"))?,
            };
            values.insert(name.to_owned(), value);
        }
        Ok(Opts {
            values,
            flags: set,
            read: RefCell::new(BTreeSet::new()),
        })
    }

    pub fn flag(&self, name: &str) -> bool {
        self.read.borrow_mut().insert(name.to_owned());
        self.flags.contains(name)
    }

    pub fn opt(&self, name: &str) -> Option<String> {
        self.read.borrow_mut().insert(name.to_owned());
        self.values.get(name).cloned()
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.opt(name).unwrap_or_else(|| default.to_owned())
    }

    pub fn num<T: FromStr>(&self, name: &str, default: T) -> anyhow::Result<T> {
        match self.opt(name) {
            None => Ok(default),
            Some(v) => v
                .replace('_', "")
                .parse()
                .map_err(|_| anyhow::anyhow!("--{name}: not a valid number: {v:?}")),
        }
    }

    pub fn secs(&self, name: &str, default: f64) -> anyhow::Result<Duration> {
        let s: f64 = self.num(name, default)?;
        if !(s > 0.0 && s.is_finite()) {
            bail!("--{name} must be > 0 seconds");
        }
        Ok(Duration::from_secs_f64(s))
    }

    /// A pause in seconds: like [`secs`](Self::secs), 0 allowed.
    pub fn pause(&self, name: &str, default: f64) -> anyhow::Result<Duration> {
        let s: f64 = self.num(name, default)?;
        if !(s >= 0.0 && s.is_finite()) {
            bail!("--{name} must be >= 0 seconds");
        }
        Ok(Duration::from_secs_f64(s))
    }

    /// A rate in messages/s, or `None` for `max`.
    pub fn rate(&self, name: &str, default: Option<f64>) -> anyhow::Result<Option<f64>> {
        match self.opt(name).as_deref() {
            None => Ok(default),
            Some("max") => Ok(None),
            Some(v) => {
                let r: f64 = v
                    .parse()
                    .with_context(|| format!("--{name}: not a number or `max`: {v:?}"))?;
                if !(r > 0.0 && r.is_finite()) {
                    bail!("--{name} must be > 0 or `max`");
                }
                Ok(Some(r))
            }
        }
    }

    /// Fails on options the scenario never read.
    pub fn finish(&self) -> anyhow::Result<()> {
        let read = self.read.borrow();
        let unknown: Vec<_> = self
            .values
            .keys()
            .chain(self.flags.iter())
            .filter(|k| !read.contains(*k))
            .map(|k| format!("--{k}"))
            .collect();
        if !unknown.is_empty() {
            bail!("unknown option(s) for this scenario: {}", unknown.join(" "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn values_flags_and_unknowns() {
        let o = Opts::parse(&argv("--n 1_000 --rate=max --quiet --typo 3"), &["quiet"]).unwrap();
        assert_eq!(o.num::<usize>("n", 0).unwrap(), 1000);
        assert_eq!(o.rate("rate", Some(5.0)).unwrap(), None);
        assert!(o.flag("quiet"));
        assert_eq!(o.num::<u64>("absent", 7).unwrap(), 7);
        assert!(o.finish().unwrap_err().to_string().contains("--typo"));
        assert!(Opts::parse(&argv("--n"), &[]).is_err());
        assert!(Opts::parse(&argv("stray"), &[]).is_err());
    }
}
