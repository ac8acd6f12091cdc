//! One home for how an enum with wire names is printed and parsed.

/// Implement `Display` (the wire name) and `FromStr` (by the wire name) for
/// an enum with an `ALL` list and an `as_str` method. `$unknown` turns text
/// that names no variant into the `$err` error.
macro_rules! wire_names {
    ($t:ty, $err:ty, $unknown:expr) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $t {
            type Err = $err;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t>::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| ($unknown)(s))
            }
        }
    };
}

pub(crate) use wire_names;
