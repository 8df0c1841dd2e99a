//! Every error found in one pass, rather than the first: a policy set or
//! its credentials are checked whole, so that an operator fixes them all at
//! once instead of one per restart.

use std::fmt;

/// Errors of one kind, shown one per line.
#[derive(Debug)]
pub struct ErrorList<E>(pub Vec<E>);

impl<E: fmt::Display> fmt::Display for ErrorList<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl<E: std::error::Error> std::error::Error for ErrorList<E> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_error_a_line() {
        let list = ErrorList(vec!["first", "second"]);
        assert_eq!(list.to_string(), "first\nsecond");
        assert_eq!(ErrorList(vec!["only"]).to_string(), "only");
        assert_eq!(ErrorList::<&str>(vec![]).to_string(), "");
    }
}
