//! File-name validation: the one gate every name passes before it reaches the namespace.
//!
//! Owns: [`validate_name`] and [`NameError`]. A valid name is relative, `/`-separated, has no
//! empty, `.` or `..` component, no NUL, control character or backslash, at most
//! [`NAME_BYTES_MAX`] bytes in all and [`COMPONENT_BYTES_MAX`] per component.
//! Must never: normalise or rewrite a name (a name is accepted as written or refused), touch a
//! file system, or panic on any input.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most bytes in a whole name.
pub const NAME_BYTES_MAX: usize = 1024;
/// Most bytes in one `/`-separated component.
pub const COMPONENT_BYTES_MAX: usize = 255;

/// Why a name was refused. Refusing a name never changes any state.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum NameError {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// The name is longer than [`NAME_BYTES_MAX`].
    #[error("the name is {bytes} bytes long, more than {NAME_BYTES_MAX}")]
    TooLong {
        /// Its length in bytes.
        bytes: usize,
    },
    /// The name starts with `/`.
    #[error("the name is absolute (starts with '/'); names are relative")]
    Absolute,
    /// A component is empty (`a//b` or a trailing `/`).
    #[error("the name has an empty component ('//' or a trailing '/')")]
    EmptyComponent,
    /// A component is `.` or `..`.
    #[error("the name has a '{component}' component")]
    DotComponent {
        /// `.` or `..`.
        component: String,
    },
    /// A component is longer than [`COMPONENT_BYTES_MAX`].
    #[error("a component is {bytes} bytes long, more than {COMPONENT_BYTES_MAX}")]
    ComponentTooLong {
        /// Its length in bytes.
        bytes: usize,
    },
    /// The name holds a NUL or control character, or a backslash.
    #[error("the name holds a forbidden character {character:?} at byte {at}")]
    ForbiddenCharacter {
        /// The character.
        character: char,
        /// Its byte offset.
        at: usize,
    },
}

/// Returns `name` if it is a valid file name, or why not.
pub fn validate_name(name: &str) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(NameError::TooLong { bytes: name.len() });
    }
    if let Some((at, character)) = name
        .char_indices()
        .find(|&(_, c)| c.is_control() || c == '\\')
    {
        return Err(NameError::ForbiddenCharacter { character, at });
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    for component in name.split('/') {
        match component {
            "" => return Err(NameError::EmptyComponent),
            "." | ".." => {
                return Err(NameError::DotComponent {
                    component: component.to_owned(),
                });
            }
            _ if component.len() > COMPONENT_BYTES_MAX => {
                return Err(NameError::ComponentTooLong {
                    bytes: component.len(),
                });
            }
            _ => {}
        }
    }
    debug_assert!(!name.is_empty() && name.len() <= NAME_BYTES_MAX);
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_of_names() {
        let long_component = "c".repeat(COMPONENT_BYTES_MAX + 1);
        let ok_component = "c".repeat(COMPONENT_BYTES_MAX);
        let long_name = [ok_component.as_str(); 5].join("/");
        let table: Vec<(&str, Result<(), NameError>)> = vec![
            ("a", Ok(())),
            ("inputs/cat.jpg", Ok(())),
            ("a/b/c.d", Ok(())),
            ("..a/b..", Ok(())),
            ("émoji-✓", Ok(())),
            (ok_component.as_str(), Ok(())),
            ("", Err(NameError::Empty)),
            ("/etc/passwd", Err(NameError::Absolute)),
            ("/", Err(NameError::Absolute)),
            ("a//b", Err(NameError::EmptyComponent)),
            ("a/", Err(NameError::EmptyComponent)),
            (
                "../x",
                Err(NameError::DotComponent {
                    component: "..".into(),
                }),
            ),
            (
                "a/./b",
                Err(NameError::DotComponent {
                    component: ".".into(),
                }),
            ),
            (
                "a/..",
                Err(NameError::DotComponent {
                    component: "..".into(),
                }),
            ),
            (
                "a\0b",
                Err(NameError::ForbiddenCharacter {
                    character: '\0',
                    at: 1,
                }),
            ),
            (
                "a\nb",
                Err(NameError::ForbiddenCharacter {
                    character: '\n',
                    at: 1,
                }),
            ),
            (
                "a\\b",
                Err(NameError::ForbiddenCharacter {
                    character: '\\',
                    at: 1,
                }),
            ),
            (
                long_component.as_str(),
                Err(NameError::ComponentTooLong {
                    bytes: COMPONENT_BYTES_MAX + 1,
                }),
            ),
            (
                long_name.as_str(),
                Err(NameError::TooLong {
                    bytes: long_name.len(),
                }),
            ),
        ];
        for (name, want) in table {
            let got = validate_name(name).map(|_| ());
            assert_eq!(got, want, "{name:?}");
        }
    }

    #[test]
    fn errors_read_clearly() {
        let e = validate_name("../x").expect_err("refused");
        assert_eq!(e.to_string(), "the name has a '..' component");
        let e = validate_name("/x").expect_err("refused");
        assert!(e.to_string().contains("absolute"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_accepted_names_are_clean(name in ".{0,300}") {
            if let Ok(valid) = validate_name(&name) {
                proptest::prop_assert_eq!(valid, name.as_str());
                proptest::prop_assert!(!valid.starts_with('/'));
                proptest::prop_assert!(valid.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
                proptest::prop_assert!(!valid.chars().any(|c| c.is_control() || c == '\\'));
            }
        }
    }
}
