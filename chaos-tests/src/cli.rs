//! Command-line flags of the harness binaries: `--flag value` or `--flag=value`.

use std::io::Write;
use std::process::ExitCode;

/// The process arguments, read flag by flag.
#[derive(Debug)]
pub struct Flags {
    args: std::vec::IntoIter<String>,
}

/// One flag, with its value when written `--flag=value`.
#[derive(Debug)]
pub struct Flag {
    pub name: String,
    inline: Option<String>,
}

impl Flags {
    /// This process's arguments, without the program name.
    pub fn from_env() -> Self {
        Self::new(std::env::args().skip(1).collect())
    }

    pub fn new(args: Vec<String>) -> Self {
        Self { args: args.into_iter() }
    }

    /// The next flag.
    pub fn next_flag(&mut self) -> Option<Flag> {
        let arg = self.args.next()?;
        Some(match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => Flag {
                name: f.to_string(),
                inline: Some(v.to_string()),
            },
            _ => Flag {
                name: arg,
                inline: None,
            },
        })
    }
}

impl Flag {
    /// The flag's value: after `=`, or the next argument.
    pub fn value(&mut self, flags: &mut Flags) -> Result<String, String> {
        self.inline
            .take()
            .or_else(|| flags.args.next())
            .ok_or(format!("{} needs a value", self.name))
    }

    /// The flag's value as a whole number.
    pub fn number(&mut self, flags: &mut Flags) -> Result<u64, String> {
        let v = self.value(flags)?;
        v.parse().map_err(|_| format!("{}: {v:?} is not a number", self.name))
    }

    /// The flag's value parsed as `T`.
    pub fn parsed<T: std::str::FromStr>(&mut self, flags: &mut Flags) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.value(flags)?;
        v.parse().map_err(|e| format!("{}: {e}", self.name))
    }
}

/// What a harness binary's parsed arguments say: `Ok(args)` to run with, or `Err(code)` to exit
/// with once the usage (asked for with `--help`: 0) or the error (as `NAME: error`: 2) is printed.
pub fn args_or_exit<A>(name: &str, usage: &str, parsed: Result<Option<A>, String>) -> Result<A, ExitCode> {
    match parsed {
        Ok(Some(args)) => Ok(args),
        Ok(None) => {
            let _ = std::io::stdout().write_all(usage.as_bytes());
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{name}: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// A harness binary's exit code for how its run ended, an error printed as `NAME: error` (1).
pub fn exit(name: &str, ran: Result<(), String>) -> ExitCode {
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_and_missing_values() {
        let mut flags = Flags::new(["--a=1", "--b", "2", "--c"].map(String::from).to_vec());
        let mut a = flags.next_flag().unwrap();
        assert_eq!(a.name, "--a");
        assert_eq!(a.number(&mut flags), Ok(1));
        let mut b = flags.next_flag().unwrap();
        assert_eq!(b.value(&mut flags).as_deref(), Ok("2"));
        let mut c = flags.next_flag().unwrap();
        assert_eq!(c.value(&mut flags), Err("--c needs a value".to_string()));
        assert!(flags.next_flag().is_none());
    }
}
