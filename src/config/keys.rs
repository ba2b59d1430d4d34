//! How a configuration key is declared: once, with its field, default,
//! reader and display. `keys!` writes [`Config`](super::Config), its
//! `Default`, its `Debug` (which never prints a secret), the list of key
//! names, and [`Config::set`](super::Config::set).

/// Declares the configuration keys: `pub struct Config { … }` whose
/// entries are `/// doc` `name: Type = default, reader, shown;`, where `reader` is a
/// `fn(key, text) -> Result<Type, ConfigError>` and `shown` one of the
/// display functions below.
macro_rules! keys {
    (
        $(#[doc = $config_doc:literal])*
        pub struct Config {
            $( $(#[doc = $doc:literal])* $key:ident : $ty:ty = $default:expr, $read:path, $shown:ident; )*
        }
    ) => {
        $(#[doc = $config_doc])*
        #[derive(Clone, PartialEq)]
        #[non_exhaustive]
        pub struct Config {
            $( $(#[doc = $doc])* pub $key: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $key: $default, )* }
            }
        }

        /// Every key's name, in the order declared.
        pub(crate) const KEY_NAMES: &[&str] = &[$( stringify!($key) ),*];

        impl Config {
            /// Sets one key from its text form. Returns `false` for an
            /// unknown key.
            pub fn set(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
                match key {
                    $( stringify!($key) => self.$key = $read(stringify!($key), value)?, )*
                    _ => return Ok(false),
                }
                Ok(true)
            }
        }

        impl std::fmt::Debug for Config {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("Config")
                    $( .field(stringify!($key), &keys::$shown(&self.$key)) )*
                    .finish()
            }
        }
    };
}
pub(super) use keys;

use super::redact_url;
use std::fmt::Debug;

/// A value shown as it is.
pub(super) fn plain<T: Debug>(value: &T) -> &dyn Debug {
    value
}

/// A URL, its password masked.
pub(super) fn url(value: &str) -> String {
    redact_url(value)
}

/// A URL if set, its password masked.
pub(super) fn some_url(value: &Option<String>) -> Option<String> {
    value.as_deref().map(redact_url)
}

/// A secret: only whether it is set.
pub(super) fn secret(value: &Option<String>) -> Option<&'static str> {
    value.as_ref().map(|_| "***")
}
