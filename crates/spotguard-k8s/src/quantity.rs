//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`, `1k`, `0.5`), read exactly.
//!
//! A quantity is a decimal number with an optional suffix: binary (`Ki Mi Gi Ti Pi Ei`),
//! decimal (`n u m k M G T P E`) or a decimal exponent (`e3`, `E-2`). Spot Guard keeps it as
//! an exact integer mantissa with a power of ten and a power of two, so no value is rounded
//! by floating point. Conversions round **up**, as Kubernetes does for scheduling
//! (`1n` of CPU is 1 millicore).
//!
//! ```
//! use spotguard_k8s::quantity::Quantity;
//! assert_eq!(Quantity::parse("100m").unwrap().millis().unwrap(), 100);
//! assert_eq!(Quantity::parse("1.5Gi").unwrap().units().unwrap(), 1_610_612_736);
//! assert_eq!(Quantity::parse("2e3").unwrap().units().unwrap(), 2000);
//! assert_eq!(Quantity::parse("0.5").unwrap().millis().unwrap(), 500);
//! assert!(Quantity::parse("1.5.2").is_err());
//! ```

use crate::error::Error;

/// An exact, non-negative quantity: `mantissa × 10^exp10 × 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

fn invalid(value: &str, reason: impl Into<String>) -> Error {
    Error::Quantity {
        object: "quantity".into(),
        field: "value".into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl Quantity {
    /// Parses the Kubernetes spelling. Negative quantities are refused: resource amounts
    /// cannot be negative. The error's object and field are placeholders; fill them in with
    /// [`Error::at`].
    pub fn parse(value: &str) -> Result<Self, Error> {
        let s = value;
        if s.is_empty() {
            return Err(invalid(value, "empty"));
        }
        let body = match s.as_bytes()[0] {
            b'+' => &s[1..],
            b'-' => return Err(invalid(value, "negative quantities are not valid here")),
            _ => s,
        };
        let number_len = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, suffix) = body.split_at(number_len);
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if frac_part.contains('.') {
            return Err(invalid(value, "more than one decimal point"));
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid(value, "no digits"));
        }
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        // Trailing zeros of the fraction carry no value; dropping them keeps big inputs exact.
        let mut exp10 = -(frac_part.len() as i64);
        let mut digits = digits.to_string();
        while digits.ends_with('0') && exp10 < 0 {
            digits.pop();
            exp10 += 1;
        }
        let mantissa = if digits.is_empty() {
            0
        } else if digits.len() > 38 {
            return Err(invalid(value, "too many significant digits"));
        } else {
            digits
                .parse::<u128>()
                .map_err(|e| invalid(value, e.to_string()))?
        };
        let (suffix_exp10, exp2) = match suffix {
            "" => (0, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            other => {
                let exponent = other
                    .strip_prefix('e')
                    .or_else(|| other.strip_prefix('E'))
                    .ok_or_else(|| invalid(value, format!("unknown suffix {other:?}")))?;
                let unsigned = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
                if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid(value, format!("unknown suffix {other:?}")));
                }
                let e: i64 = exponent
                    .parse()
                    .map_err(|_| invalid(value, format!("exponent {exponent:?} out of range")))?;
                if e.abs() > 1000 {
                    return Err(invalid(
                        value,
                        format!("exponent {exponent:?} out of range"),
                    ));
                }
                (e, 0)
            }
        };
        exp10 += suffix_exp10;
        Ok(Self {
            mantissa,
            exp10: exp10 as i32,
            exp2,
        })
    }

    /// The value times `scale`, rounded up to an integer; `None` when it does not fit in a
    /// `u64`.
    fn scaled_ceil(&self, scale: u128) -> Option<u64> {
        if self.mantissa == 0 {
            return Some(0);
        }
        let numerator = self
            .mantissa
            .checked_mul(scale)?
            .checked_mul(1u128.checked_shl(self.exp2)?)?;
        let result = if self.exp10 >= 0 {
            numerator.checked_mul(10u128.checked_pow(self.exp10 as u32)?)?
        } else {
            match 10u128.checked_pow(self.exp10.unsigned_abs()) {
                Some(denominator) => numerator.div_ceil(denominator),
                // The denominator exceeds any numerator: a positive value below one.
                None => 1,
            }
        };
        u64::try_from(result).ok()
    }

    /// The value in thousandths, rounded up (CPU in millicores).
    pub fn millis(&self) -> Result<u64, Error> {
        self.scaled_ceil(1000)
            .ok_or_else(|| invalid(&self.to_string(), "too large"))
    }

    /// The value in whole units, rounded up (memory in bytes, pods as a count).
    pub fn units(&self) -> Result<u64, Error> {
        self.scaled_ceil(1)
            .ok_or_else(|| invalid(&self.to_string(), "too large"))
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}e{}", self.mantissa, self.exp10)?;
        if self.exp2 > 0 {
            write!(f, "*2^{}", self.exp2)?;
        }
        Ok(())
    }
}

/// CPU in millicores (rounded up); the error names `object` and `field`.
pub fn cpu_millis(value: &str, object: &str, field: &str) -> Result<u64, Error> {
    Quantity::parse(value)
        .and_then(|q| q.millis())
        .map_err(|e| with_value(e, value).at(object, field))
}

/// Memory in bytes, or a count (rounded up); the error names `object` and `field`.
pub fn units(value: &str, object: &str, field: &str) -> Result<u64, Error> {
    Quantity::parse(value)
        .and_then(|q| q.units())
        .map_err(|e| with_value(e, value).at(object, field))
}

/// Reports the text as written rather than the internal form.
fn with_value(err: Error, written: &str) -> Error {
    match err {
        Error::Quantity {
            object,
            field,
            reason,
            ..
        } => Error::Quantity {
            object,
            field,
            value: written.to_string(),
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn millis(s: &str) -> u64 {
        Quantity::parse(s).unwrap().millis().unwrap()
    }

    fn bytes(s: &str) -> u64 {
        Quantity::parse(s).unwrap().units().unwrap()
    }

    #[test]
    fn documented_spellings() {
        assert_eq!(millis("100m"), 100);
        assert_eq!(millis("1"), 1000);
        assert_eq!(millis("0.5"), 500);
        assert_eq!(millis(".5"), 500);
        assert_eq!(millis("5."), 5000);
        assert_eq!(millis("+2"), 2000);
        assert_eq!(millis("1n"), 1, "rounded up like the scheduler");
        assert_eq!(millis("1500u"), 2);
        assert_eq!(millis("0.0001"), 1);
        assert_eq!(millis("0"), 0);
        assert_eq!(millis("0.000"), 0);
        assert_eq!(bytes("1.5Gi"), 1_610_612_736);
        assert_eq!(bytes("500Mi"), 524_288_000);
        assert_eq!(bytes("1Ki"), 1024);
        assert_eq!(bytes("1k"), 1000);
        assert_eq!(bytes("1M"), 1_000_000);
        assert_eq!(bytes("2e3"), 2000);
        assert_eq!(bytes("2E3"), 2000);
        assert_eq!(bytes("12e-1"), 2);
        assert_eq!(bytes("1E"), 1_000_000_000_000_000_000);
        assert_eq!(bytes("1Ei"), 1 << 60);
        assert_eq!(bytes("129e6"), 129_000_000);
        assert_eq!(bytes("123Mi"), 128_974_848);
        assert_eq!(bytes("0.1Ki"), 103);
        assert_eq!(bytes("1e-100"), 1);
        assert_eq!(bytes("100000000000000000000000000000000000e-30"), 100_000);
    }

    #[test]
    fn malformed_input_is_refused_with_a_reason() {
        for bad in [
            "", "abc", "1.5.2", "1K", "1 Mi", " 1", "1Mi ", "--1", "-1", "1e", "1e+", "1ee3",
            "1.Gi.", ".", "1x", "1e5000", "Mi",
        ] {
            let err = Quantity::parse(bad).and_then(|q| q.units());
            assert!(err.is_err(), "{bad:?} should be refused");
        }
        assert!(
            Quantity::parse("99999999999E").unwrap().units().is_err(),
            "too large"
        );
    }

    #[test]
    fn errors_name_object_field_and_value() {
        let err = cpu_millis(
            "1.5.2",
            "pod default/web",
            "spec.containers[app].resources.requests.cpu",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pod default/web"), "{err}");
        assert!(
            err.contains("spec.containers[app].resources.requests.cpu"),
            "{err}"
        );
        assert!(err.contains("\"1.5.2\""), "{err}");
    }

    proptest! {
        #[test]
        fn integers_round_trip(n in 0u64..1_000_000_000_000) {
            prop_assert_eq!(bytes(&n.to_string()), n);
            prop_assert_eq!(millis(&format!("{n}m")), n);
        }

        #[test]
        fn binary_suffixes_multiply_exactly(n in 0u64..10_000, i in 0usize..5) {
            let (suffix, shift) = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40), ("Pi", 50)][i];
            prop_assert_eq!(bytes(&format!("{n}{suffix}")), n << shift);
        }

        #[test]
        fn decimal_suffixes_and_exponents_agree(n in 0u64..1_000_000, e in 0u32..9) {
            let suffixes = ["", "", "", "k", "", "", "M", "", ""];
            let expected = n * 10u64.pow(e);
            prop_assert_eq!(bytes(&format!("{n}e{e}")), expected);
            if !suffixes[e as usize].is_empty() {
                prop_assert_eq!(bytes(&format!("{n}{}", suffixes[e as usize])), expected);
            }
        }

        #[test]
        fn fractions_round_up(whole in 0u64..10_000, frac in 0u64..1_000_000) {
            let text = format!("{whole}.{frac:06}");
            // millis = ceil((whole * 1e6 + frac) / 1000)
            let expected = (whole * 1_000_000 + frac).div_ceil(1000);
            prop_assert_eq!(millis(&text), expected);
        }

        #[test]
        fn arbitrary_text_never_panics(s in "[0-9.eEkKMGTPinum+-]{0,12}") {
            let _ = Quantity::parse(&s).and_then(|q| q.millis());
        }
    }
}
