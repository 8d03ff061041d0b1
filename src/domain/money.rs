//! Money: integer micros and the one rounding rule, a leaf that rating,
//! tariffs, invoices and their documents all use.

use crate::domain::model::Language;

/// Micros in one unit of a currency (a dollar, a euro).
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// `numerator / denominator` (`denominator` > 0) rounded half up: the one
/// rounding rule of money. Exactly half goes up, towards +∞.
pub fn divide_rounding_half_up(numerator: i128, denominator: i128) -> i128 {
    (2 * numerator + denominator).div_euclid(2 * denominator)
}

/// The price of `billed_seconds` at `per_minute_micros`, rounded half up to
/// the micro. Saturates rather than wrapping for absurd inputs.
pub fn cost_of(billed_seconds: i64, per_minute_micros: i64) -> i64 {
    let exact_times_60 = i128::from(billed_seconds) * i128::from(per_minute_micros);
    i64::try_from(divide_rounding_half_up(exact_times_60, 60)).unwrap_or(i64::MAX)
}

/// Decimal places of `currency`'s minor unit (ISO 4217): none for the yen
/// and its like, three for the dinars of Bahrain, Iraq, Jordan, Kuwait,
/// Libya, Tunisia and Oman's rial, two for every other code.
pub fn minor_unit_digits(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// Micros in one minor unit of `currency` (10,000 for cents).
fn micros_per_minor_unit(currency: &str) -> i64 {
    MICROS_PER_UNIT / 10_i64.pow(minor_unit_digits(currency))
}

/// `micros` in `currency`'s minor units, rounded half up: for display
/// only; amounts are held and summed in micros.
pub fn to_minor_units(micros: i64, currency: &str) -> i64 {
    let unit = micros_per_minor_unit(currency);
    i64::try_from(divide_rounding_half_up(
        i128::from(micros),
        i128::from(unit),
    ))
    .unwrap_or(i64::MAX)
}

/// Parts of a total as displayed, in minor units, so that they add up to
/// the displayed total (the exact total rounded half up): each part is its
/// exact value rounded down or up to the minor unit, and the units the
/// rounded-down parts leave short go to those with the largest remainders
/// (the earliest first among equals). Returns the parts and the total.
pub fn displayed_parts(parts_micros: &[i64], currency: &str) -> (Vec<i64>, i64) {
    let unit = i128::from(micros_per_minor_unit(currency));
    let exact_total: i128 = parts_micros.iter().map(|&p| i128::from(p)).sum();
    let total = divide_rounding_half_up(exact_total, unit);
    let mut shown: Vec<i128> = parts_micros
        .iter()
        .map(|&p| i128::from(p).div_euclid(unit))
        .collect();
    let short = total - shown.iter().sum::<i128>();
    let mut by_remainder: Vec<usize> = (0..parts_micros.len()).collect();
    by_remainder.sort_by_key(|&i| std::cmp::Reverse(i128::from(parts_micros[i]).rem_euclid(unit)));
    for &i in by_remainder
        .iter()
        .take(usize::try_from(short).unwrap_or(0))
    {
        shown[i] += 1;
    }
    let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
    (shown.into_iter().map(clamp).collect(), clamp(total))
}

/// `minor_units` of `currency` as written in `language`: `USD 1,234.56`
/// in English, `1.234,56 USD` in German; a minus sign before the digits.
pub fn format_amount(minor_units: i64, currency: &str, language: Language) -> String {
    let digits = minor_unit_digits(currency) as usize;
    let (group, decimal) = match language {
        Language::En => (',', '.'),
        Language::De => ('.', ','),
    };
    let magnitude = minor_units.unsigned_abs().to_string();
    let padded = format!("{magnitude:0>width$}", width = digits + 1);
    let (whole, fraction) = padded.split_at(padded.len() - digits);
    let grouped = grouped_by_thousands(whole, group);
    let sign = if minor_units < 0 { "-" } else { "" };
    let number = if digits == 0 {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}{decimal}{fraction}")
    };
    match language {
        Language::En => format!("{currency} {number}"),
        Language::De => format!("{number} {currency}"),
    }
}

/// A count (of calls, say) as written in `language`: `1,234` in English,
/// `1.234` in German.
pub fn format_count(count: i64, language: Language) -> String {
    let group = match language {
        Language::En => ',',
        Language::De => '.',
    };
    let grouped = grouped_by_thousands(&count.unsigned_abs().to_string(), group);
    if count < 0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

fn grouped_by_thousands(digits: &str, group: char) -> String {
    let mut grouped = String::with_capacity(digits.len() * 4 / 3 + 1);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(group);
        }
        grouped.push(digit);
    }
    grouped
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

    #[test]
    fn amounts_are_written_for_the_language_and_currency() {
        assert_eq!(format_amount(123_456, "USD", Language::En), "USD 1,234.56");
        assert_eq!(format_amount(123_456, "USD", Language::De), "1.234,56 USD");
        assert_eq!(format_amount(-5, "EUR", Language::En), "EUR -0.05");
        assert_eq!(format_amount(0, "EUR", Language::De), "0,00 EUR");
        assert_eq!(
            format_amount(1_234_567, "JPY", Language::En),
            "JPY 1,234,567"
        );
        assert_eq!(
            format_amount(1_234_567, "KWD", Language::De),
            "1.234,567 KWD"
        );
        assert_eq!(
            format_amount(i64::MIN, "USD", Language::En),
            "USD -92,233,720,368,547,758.08"
        );
    }

    #[test]
    fn micros_become_minor_units_rounding_half_up() {
        assert_eq!(to_minor_units(1_234_565_000, "USD"), 123_457);
        assert_eq!(to_minor_units(5_000, "USD"), 1);
        assert_eq!(to_minor_units(4_999, "USD"), 0);
        assert_eq!(to_minor_units(-5_000, "USD"), 0);
        assert_eq!(to_minor_units(-5_001, "USD"), -1);
        assert_eq!(to_minor_units(1_500_000, "JPY"), 2);
    }

    #[test]
    fn three_thirds_of_a_dollar_add_up_as_displayed() {
        let third = 333_333;
        let (parts, total) = displayed_parts(&[third, third, third + 1], "USD");
        assert_eq!(total, 100);
        assert_eq!(parts.iter().sum::<i64>(), 100);
        assert_eq!(parts, vec![33, 33, 34]);
    }

    #[test]
    fn random_parts_always_add_up_to_the_rounded_total_each_within_a_unit() {
        let mut state: u64 = 0x5eed_0001;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for _ in 0..10_000 {
            let count = (next() % 12) as usize;
            let currency = ["USD", "JPY", "KWD"][(next() % 3) as usize];
            let parts: Vec<i64> = (0..count)
                .map(|_| (next() % 2_000_000_000) as i64 - 500_000_000)
                .collect();
            let (shown, total) = displayed_parts(&parts, currency);
            let exact: i64 = parts.iter().sum();
            assert_eq!(
                total,
                to_minor_units(exact, currency),
                "{parts:?} {currency}"
            );
            assert_eq!(shown.iter().sum::<i64>(), total, "{parts:?} {currency}");
            let unit = micros_per_minor_unit(currency);
            for (part, shown) in parts.iter().zip(&shown) {
                let floor = part.div_euclid(unit);
                assert!(
                    *shown == floor || *shown == floor + 1,
                    "{part} shown as {shown}"
                );
            }
        }
    }
}
