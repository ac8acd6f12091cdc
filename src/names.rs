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
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| ($unknown)(s))
            }
        }
    };
}

/// Give an enum of plain variants its wire names, listed once: `ALL`,
/// `as_str`, and (through [`wire_names`]) `Display` and `FromStr`, whose
/// error says `unknown value `x``.
macro_rules! text_enum {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$t] = &[$(<$t>::$v),+];

            /// The wire and storage name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(<$t>::$v => $s),+
                }
            }
        }

        $crate::names::wire_names!($t, String, |other: &str| format!(
            "unknown value `{other}`"
        ));
    };
}

pub(crate) use {text_enum, wire_names};
