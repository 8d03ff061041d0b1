//! Money: integer micros and the one rounding rule, a leaf that rating,
//! tariffs and invoices all use.

/// The price of `billed_seconds` at `per_minute_micros`, rounded half up to
/// the micro. Saturates rather than wrapping for absurd inputs.
pub fn cost_of(billed_seconds: i64, per_minute_micros: i64) -> i64 {
    let exact_times_60 = i128::from(billed_seconds) * i128::from(per_minute_micros);
    let rounded = (exact_times_60 + 30).div_euclid(60);
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractional_micros_round_half_up() {
        // 1 s at 90 micros/min = 1.5 micros -> 2; 1 s at 89 = 1.48 -> 1.
        assert_eq!(cost_of(1, 90), 2);
        assert_eq!(cost_of(1, 89), 1);
        assert_eq!(cost_of(1, 29), 0);
        assert_eq!(cost_of(1, 30), 1);
    }

    #[test]
    fn the_largest_inputs_do_not_overflow() {
        assert_eq!(cost_of(86_400, i64::MAX), i64::MAX);
    }
}
