//! Tariffs: prices by destination and time of day, and rating a call in
//! segments across the windows it crosses. Pure; integer micros.
//!
//! The rule, in full:
//! 1. The tariffs that can price a call are those whose destination prefix
//!    the callee number starts with (`""` matches every number; a leading
//!    `+` is ignored on both sides).
//! 2. At any instant, the tariff in force is, among those candidates whose
//!    days and window contain the instant's local weekday and minute (in the
//!    billing time zone), the one with the longest prefix; on equal
//!    prefixes a tariff with a window beats one without. If none is in
//!    force, the plan's own rate and increment apply (the `base` tariff).
//!    A wrapping window (`start_minute > end_minute`) belongs to the day it
//!    starts on: Friday 22:00–08:00 covers Saturday 00:00–08:00.
//! 3. The billed duration is the call's duration rounded up by the
//!    increments of the tariff in force when the call starts: its first
//!    increment, then its billing increment.
//! 4. The billed interval `[start, start + billed)` (start in whole
//!    seconds) is cut wherever the tariff in force changes (window edges,
//!    local midnight, daylight-saving changes); each piece is a segment
//!    priced at its tariff's per-minute rate, rounded half up to the micro.
//! 5. The connect fee is charged once, from the tariff the call starts in.
//!    The call's cost is the connect fee plus the sum of its segments.

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

use super::money::cost_of;
use super::validation as valid;
use crate::error::{AppError, AppResult};

/// Minutes in a day; window edges are `0..=MINUTES_PER_DAY`.
pub const MINUTES_PER_DAY: u16 = 1440;
/// Tariffs one plan may hold.
pub const MAX_TARIFFS_PER_PLAN: usize = 200;
/// Segments a call of the longest duration may be cut into under a plan's
/// tariffs, at most: each is a stored row and a line of history, so a plan
/// whose windows would cut one call into hundreds is refused.
pub const MAX_SEGMENTS_PER_CALL: usize = 100;
/// The longest a call's local span can be: 24 hours, its last increment
/// rounded up (at most an hour), and an hour more across a change from
/// summer time.
const LONGEST_LOCAL_SPAN_MINUTES: u16 = 26 * 60;
/// The name of the plan's own rate when no tariff is in force.
pub const BASE_TARIFF: &str = "base";

/// Days of the week as a set; bit 0 is Monday. Empty means every day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DaySet(u8);

impl DaySet {
    /// Every day.
    pub const EVERY_DAY: DaySet = DaySet(0);

    /// The set of `days`, each 0 (Monday) to 6 (Sunday).
    pub fn of(days: impl IntoIterator<Item = u8>) -> DaySet {
        DaySet(days.into_iter().fold(0, |set, day| set | (1 << (day % 7))))
    }

    /// Whether `day` (0 = Monday) is in the set.
    pub fn contains(self, day: u8) -> bool {
        self.0 == 0 || self.0 & (1 << (day % 7)) != 0
    }

    /// The bitmask (0: every day).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set of a stored bitmask.
    pub fn from_bits(bits: u8) -> DaySet {
        DaySet(bits & 0x7f)
    }
}

/// A daily time window in local minutes: `start < end` within a day, or
/// `start > end` wrapping past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u16,
    pub end: u16,
}

/// A tariff as a client describes it, before it is checked; see
/// [`Tariff::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TariffTerms {
    pub name: String,
    /// Up to 15 digits, a leading `+` allowed; empty matches every number.
    pub destination_prefix: String,
    /// Days 0 (Monday) to 6 (Sunday); empty: every day.
    pub days: Vec<u8>,
    /// Local minutes of the day; both 0: no window.
    pub start_minute: i32,
    pub end_minute: i32,
    pub per_minute_micros: i64,
    pub connect_fee_micros: i64,
    /// 0: the billing increment.
    pub first_increment_seconds: i32,
    /// 0: the plan's increment.
    pub billing_increment_seconds: i32,
}

/// One tariff of a plan, its increments resolved (never 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tariff {
    pub name: String,
    /// Digits only; empty matches every destination.
    pub destination_prefix: String,
    pub days: DaySet,
    /// `None`: any time of the day.
    pub window: Option<Window>,
    pub per_minute_micros: i64,
    pub connect_fee_micros: i64,
    pub first_increment_seconds: i64,
    pub billing_increment_seconds: i64,
}

impl Tariff {
    /// Checks `terms`, the tariff at `index` of a plan whose own increment
    /// is `plan_increment`, each error naming its field
    /// (`tariffs[2].end_minute`): a name of 1 to 64 characters without
    /// control characters; a prefix of up to 15 digits; a window of two
    /// different minutes of the day (both 0: none); rates and connect fees
    /// within their bounds; increments of 0 (the default) to 3,600 s.
    pub fn new(index: usize, terms: TariffTerms, plan_increment: i32) -> AppResult<Tariff> {
        let TariffTerms {
            name,
            destination_prefix,
            days,
            start_minute,
            end_minute,
            per_minute_micros,
            connect_fee_micros,
            first_increment_seconds,
            billing_increment_seconds,
        } = terms;
        let field = |name: &str| format!("tariffs[{index}].{name}");
        let chars = name.chars().count();
        if chars == 0 || chars > 64 || name.chars().any(char::is_control) {
            return Err(AppError::invalid(
                field("name"),
                "must have 1 to 64 characters and no control characters",
            ));
        }
        let prefix = destination_prefix
            .strip_prefix('+')
            .unwrap_or(&destination_prefix);
        if prefix.len() > 15 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AppError::invalid(
                field("destination_prefix"),
                format!(
                    "must be up to 15 digits (a leading + is allowed), got {}",
                    valid::shown(&destination_prefix)
                ),
            ));
        }
        if let Some(day) = days.iter().find(|day| **day > 6) {
            return Err(AppError::invalid(
                field("days"),
                format!("{day} is not a day of the week"),
            ));
        }
        let minutes = i32::from(MINUTES_PER_DAY);
        let window = match (start_minute, end_minute) {
            (0, 0) => None,
            (start, _) if !(0..minutes).contains(&start) => {
                return Err(AppError::invalid(
                    field("start_minute"),
                    format!("must be 0 to {}, got {start}", minutes - 1),
                ));
            }
            (_, end) if !(0..=minutes).contains(&end) => {
                return Err(AppError::invalid(
                    field("end_minute"),
                    format!("must be 0 to {minutes}, got {end}"),
                ));
            }
            (start, end) if start == end => {
                return Err(AppError::invalid(
                    field("end_minute"),
                    "must differ from start_minute (both 0 means no window)",
                ));
            }
            (start, end) => Some(Window {
                start: u16::try_from(start).unwrap_or(0),
                end: u16::try_from(end).unwrap_or(0),
            }),
        };
        let increment = |name: &str, value: i32, default: i32| match value {
            0 => Ok(i64::from(default)),
            1..=3600 => Ok(i64::from(value)),
            _ => Err(AppError::invalid(
                field(name),
                format!("must be 0 to 3600 seconds, got {value}"),
            )),
        };
        let billing = increment(
            "billing_increment_seconds",
            billing_increment_seconds,
            plan_increment,
        )?;
        let first = increment(
            "first_increment_seconds",
            first_increment_seconds,
            i32::try_from(billing).unwrap_or(plan_increment),
        )?;
        Ok(Tariff {
            name,
            destination_prefix: prefix.to_owned(),
            days: DaySet::of(days),
            window,
            per_minute_micros: valid::non_negative_micros(
                &field("per_minute_micros"),
                per_minute_micros,
                valid::MAX_PER_MINUTE_MICROS,
            )?,
            connect_fee_micros: valid::non_negative_micros(
                &field("connect_fee_micros"),
                connect_fee_micros,
                valid::MAX_MONTHLY_FEE_MICROS,
            )?,
            first_increment_seconds: first,
            billing_increment_seconds: billing,
        })
    }

    /// Whether the tariff is in force at local `weekday` (0 = Monday) and
    /// `minute` of the day.
    pub fn in_force(&self, weekday: u8, minute: u16) -> bool {
        match self.window {
            None => self.days.contains(weekday),
            Some(Window { start, end }) if start < end => {
                self.days.contains(weekday) && (start..end).contains(&minute)
            }
            Some(Window { start, end }) => {
                (self.days.contains(weekday) && minute >= start)
                    || (self.days.contains((weekday + 6) % 7) && minute < end)
            }
        }
    }

    /// Whether `callee` (a leading `+` ignored) starts with the prefix.
    pub fn matches(&self, callee: &str) -> bool {
        callee
            .strip_prefix('+')
            .unwrap_or(callee)
            .starts_with(&self.destination_prefix)
    }

    /// The billed seconds of a call of `duration_seconds` starting in this
    /// tariff: the first increment, then whole billing increments.
    pub fn billed_seconds(&self, duration_seconds: i64) -> i64 {
        let first = self.first_increment_seconds.max(1);
        if duration_seconds <= first {
            return first;
        }
        let step = self.billing_increment_seconds.max(1);
        let rest = duration_seconds - first;
        first + (rest + step - 1) / step * step
    }

    /// Every (weekday, minute) the tariff is in force, as a bitset.
    fn coverage(&self) -> Vec<u64> {
        let slots = 7 * usize::from(MINUTES_PER_DAY);
        let mut bits = vec![0u64; slots.div_ceil(64)];
        for day in 0..7u8 {
            for minute in 0..MINUTES_PER_DAY {
                if self.in_force(day, minute) {
                    let slot =
                        usize::from(day) * usize::from(MINUTES_PER_DAY) + usize::from(minute);
                    bits[slot / 64] |= 1 << (slot % 64);
                }
            }
        }
        bits
    }
}

/// Refuses a set of tariffs that would leave a choice open: duplicate or
/// empty names, and two tariffs of the same prefix and kind (both with a
/// window, or both without) in force at the same local minute of some day.
pub fn check_tariffs(tariffs: &[Tariff]) -> AppResult<()> {
    if tariffs.len() > MAX_TARIFFS_PER_PLAN {
        return Err(AppError::invalid(
            "tariffs",
            format!("at most {MAX_TARIFFS_PER_PLAN} per plan"),
        ));
    }
    let segments = most_segments(tariffs);
    if segments > MAX_SEGMENTS_PER_CALL {
        return Err(AppError::invalid(
            "tariffs",
            format!(
                "their windows could cut a 24-hour call into up to {segments} segments, \
                 more than {MAX_SEGMENTS_PER_CALL}: use fewer windows"
            ),
        ));
    }
    let coverage: Vec<Vec<u64>> = tariffs.iter().map(Tariff::coverage).collect();
    for (i, a) in tariffs.iter().enumerate() {
        if a.name == BASE_TARIFF {
            return Err(AppError::invalid(
                "tariffs",
                format!("the name {BASE_TARIFF:?} is the plan's own rate"),
            ));
        }
        for (j, b) in tariffs.iter().enumerate().skip(i + 1) {
            if a.name == b.name {
                return Err(AppError::invalid(
                    "tariffs",
                    format!("two tariffs are named {:?}", a.name),
                ));
            }
            let same_rank = a.destination_prefix == b.destination_prefix
                && a.window.is_some() == b.window.is_some();
            let overlap = coverage[i]
                .iter()
                .zip(&coverage[j])
                .any(|(x, y)| x & y != 0);
            if same_rank && overlap {
                return Err(AppError::invalid(
                    "tariffs",
                    format!(
                        "tariffs {:?} and {:?} have the same destination prefix {:?} and are in \
                         force at the same time, so neither would win",
                        a.name, b.name, a.destination_prefix
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// At most how many segments the longest call can be cut into under
/// `tariffs`, whatever its destination: the tariff in force changes only at
/// a window edge or at local midnight, and a span of
/// [`LONGEST_LOCAL_SPAN_MINUTES`] passes each such minute of the day once,
/// and those within its last two hours twice. An upper bound, exact for
/// windows spread over the day.
pub fn most_segments(tariffs: &[Tariff]) -> usize {
    let mut edges: Vec<u16> = std::iter::once(0)
        .chain(
            tariffs
                .iter()
                .filter_map(|t| t.window)
                .flat_map(|w| [w.start % MINUTES_PER_DAY, w.end % MINUTES_PER_DAY]),
        )
        .collect();
    edges.sort_unstable();
    edges.dedup();
    let extra = LONGEST_LOCAL_SPAN_MINUTES - MINUTES_PER_DAY;
    // The most edges in any `extra` minutes of the day, around midnight too.
    let twice = edges
        .iter()
        .map(|&from| {
            edges
                .iter()
                .filter(|&&edge| (edge + MINUTES_PER_DAY - from) % MINUTES_PER_DAY < extra)
                .count()
        })
        .max()
        .unwrap_or(0);
    1 + edges.len() + twice
}

/// A priced piece of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub tariff_name: String,
    pub start: DateTime<Utc>,
    pub billed_seconds: i64,
    pub cost_micros: i64,
}

/// A call rated against tariffs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentedRating {
    pub billed_seconds: i64,
    pub connect_fee_micros: i64,
    /// Connect fee plus the segments' costs.
    pub cost_micros: i64,
    pub segments: Vec<Segment>,
    /// The rate and billing increment of the tariff the call started in.
    pub first_per_minute_micros: i64,
    pub first_billing_increment_seconds: i64,
}

/// A plan's prices: its tariffs and its own rate as the fallback.
#[derive(Debug, Clone)]
pub struct PriceList<'a> {
    pub tariffs: &'a [Tariff],
    pub base: Tariff,
}

impl<'a> PriceList<'a> {
    /// The prices of a plan with `tariffs` and its own `per_minute_micros`
    /// and `increment_seconds`.
    pub fn new(tariffs: &'a [Tariff], per_minute_micros: i64, increment_seconds: i64) -> Self {
        PriceList {
            tariffs,
            base: Tariff {
                name: BASE_TARIFF.to_owned(),
                destination_prefix: String::new(),
                days: DaySet::EVERY_DAY,
                window: None,
                per_minute_micros,
                connect_fee_micros: 0,
                first_increment_seconds: increment_seconds,
                billing_increment_seconds: increment_seconds,
            },
        }
    }

    /// Rates a call to `callee` of `duration_seconds` (1..=86 400) starting
    /// at `start`, with windows read in `tz`.
    pub fn rate(
        &self,
        callee: &str,
        start: DateTime<Utc>,
        duration_seconds: i64,
        tz: Tz,
    ) -> SegmentedRating {
        let schedule = Schedule::for_callee(self, callee);
        // Windows are judged from the start's whole second; the first
        // segment still reports the call's exact start.
        let exact_start = start;
        let start = DateTime::from_timestamp(start.timestamp(), 0).unwrap_or(start);
        let first = schedule.in_force(start.with_timezone(&tz).naive_local());
        let billed_seconds = first.billed_seconds(duration_seconds.max(1));
        let end = start + TimeDelta::seconds(billed_seconds);
        let mut segments: Vec<(&Tariff, DateTime<Utc>, i64)> = Vec::new();
        let mut at = start;
        while at < end {
            let local = at.with_timezone(&tz).naive_local();
            let tariff = schedule.in_force(local);
            let until = schedule.next_change(at, local, tz).min(end);
            let seconds = (until - at)
                .num_seconds()
                .max(1)
                .min((end - at).num_seconds());
            match segments.last_mut() {
                Some((last, _, billed)) if last.name == tariff.name => *billed += seconds,
                _ => segments.push((tariff, at, seconds)),
            }
            at += TimeDelta::seconds(seconds);
        }
        if let Some(first) = segments.first_mut() {
            first.1 = exact_start;
        }
        let segments: Vec<Segment> = segments
            .into_iter()
            .map(|(tariff, start, billed_seconds)| Segment {
                tariff_name: tariff.name.clone(),
                start,
                billed_seconds,
                cost_micros: cost_of(billed_seconds, tariff.per_minute_micros),
            })
            .collect();
        let connect_fee_micros = first.connect_fee_micros;
        let cost_micros = segments.iter().fold(connect_fee_micros, |sum, s| {
            sum.saturating_add(s.cost_micros)
        });
        SegmentedRating {
            billed_seconds,
            connect_fee_micros,
            cost_micros,
            segments,
            first_per_minute_micros: first.per_minute_micros,
            first_billing_increment_seconds: first.billing_increment_seconds,
        }
    }
}

/// The tariffs that can price one call, best first, and the local minutes
/// at which the one in force may change.
struct Schedule<'a> {
    candidates: Vec<&'a Tariff>,
    base: &'a Tariff,
    /// Window edges (and 0, local midnight), ascending, without 1440.
    edges: Vec<u16>,
}

impl<'a> Schedule<'a> {
    fn for_callee(prices: &'a PriceList<'a>, callee: &str) -> Self {
        let mut candidates: Vec<&Tariff> = prices
            .tariffs
            .iter()
            .filter(|t| t.matches(callee))
            .collect();
        candidates.sort_by_key(|t| {
            (
                std::cmp::Reverse(t.destination_prefix.len()),
                t.window.is_none(),
            )
        });
        let mut edges = vec![0];
        for window in candidates.iter().filter_map(|t| t.window) {
            edges.extend([window.start % MINUTES_PER_DAY, window.end % MINUTES_PER_DAY]);
        }
        edges.sort_unstable();
        edges.dedup();
        Schedule {
            candidates,
            base: &prices.base,
            edges,
        }
    }

    fn in_force(&self, local: NaiveDateTime) -> &'a Tariff {
        let weekday = local.weekday().num_days_from_monday() as u8;
        let minute = (local.hour() * 60 + local.minute()) as u16;
        self.candidates
            .iter()
            .copied()
            .find(|t| t.in_force(weekday, minute))
            .unwrap_or(self.base)
    }

    /// The first instant after `at` (local `local`) at which the tariff in
    /// force may change: the next window edge or midnight, or a change of
    /// the zone's UTC offset (daylight saving) before it.
    fn next_change(&self, at: DateTime<Utc>, local: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
        let minute = (local.hour() * 60 + local.minute()) as u16;
        let date = local.date();
        let next_local = match self.edges.iter().find(|&&edge| edge > minute) {
            Some(&edge) => date.and_hms_opt(u32::from(edge / 60), u32::from(edge % 60), 0),
            None => date.succ_opt().and_then(|day| day.and_hms_opt(0, 0, 0)),
        };
        let edge = next_local
            .and_then(|next| first_instant_at_or_after(next, at, tz))
            .unwrap_or(at + TimeDelta::days(1));
        let offset = |instant: DateTime<Utc>| instant.with_timezone(&tz).offset().fix();
        if offset(edge - TimeDelta::seconds(1)) == offset(at) {
            return edge;
        }
        // The offset changes before the edge: find the second it does.
        let (mut low, mut high) = (at, edge);
        while (high - low).num_seconds() > 1 {
            let middle = low + (high - low) / 2;
            if offset(middle) == offset(at) {
                low = middle;
            } else {
                high = middle;
            }
        }
        high
    }
}

/// The first instant after `after` whose local time is `local`, or the first
/// instant after the gap `local` falls in (spring forward).
fn first_instant_at_or_after(
    local: NaiveDateTime,
    after: DateTime<Utc>,
    tz: Tz,
) -> Option<DateTime<Utc>> {
    let mut probe = local;
    // A gap is at most a few hours; look minute by minute past it.
    for _ in 0..(4 * 60) {
        match tz.from_local_datetime(&probe) {
            LocalResult::Single(instant) => return Some(instant.to_utc()).filter(|i| *i > after),
            LocalResult::Ambiguous(earlier, later) => {
                let (earlier, later) = (earlier.to_utc(), later.to_utc());
                return Some(if earlier > after { earlier } else { later }).filter(|i| *i > after);
            }
            LocalResult::None => probe += TimeDelta::minutes(1),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn tariff(name: &str, prefix: &str, window: Option<(u16, u16)>, per_minute: i64) -> Tariff {
        Tariff {
            name: name.into(),
            destination_prefix: prefix.into(),
            days: DaySet::EVERY_DAY,
            window: window.map(|(start, end)| Window { start, end }),
            per_minute_micros: per_minute,
            connect_fee_micros: 0,
            first_increment_seconds: 1,
            billing_increment_seconds: 1,
        }
    }

    /// Domestic peak 08:00–22:00 and off-peak 22:00–08:00, weekends all day
    /// at the weekend rate, and one international prefix.
    fn tariffs() -> Vec<Tariff> {
        let weekdays = DaySet::of(0..5);
        vec![
            Tariff {
                days: weekdays,
                ..tariff("peak", "", Some((480, 1320)), 120_000)
            },
            Tariff {
                days: weekdays,
                ..tariff("off-peak", "", Some((1320, 480)), 60_000)
            },
            Tariff {
                days: DaySet::of([5, 6]),
                ..tariff("weekend", "", None, 30_000)
            },
            Tariff {
                connect_fee_micros: 50_000,
                first_increment_seconds: 60,
                billing_increment_seconds: 1,
                ..tariff("uk", "44", None, 600_000)
            },
        ]
    }

    fn rate(callee: &str, start: &str, seconds: i64, tz: Tz) -> SegmentedRating {
        let tariffs = tariffs();
        PriceList::new(&tariffs, 90_000, 60).rate(callee, at(start), seconds, tz)
    }

    fn pieces(rating: &SegmentedRating) -> Vec<(&str, i64, i64)> {
        rating
            .segments
            .iter()
            .map(|s| (s.tariff_name.as_str(), s.billed_seconds, s.cost_micros))
            .collect()
    }

    #[test]
    fn a_call_inside_one_window_is_one_segment_at_that_rate() {
        // Tuesday 2026-03-10 10:00 UTC.
        let r = rate("+4930123", "2026-03-10T10:00:00Z", 90, Tz::UTC);
        assert_eq!(pieces(&r), vec![("peak", 90, 180_000)]);
        assert_eq!((r.billed_seconds, r.cost_micros), (90, 180_000));
    }

    #[test]
    fn the_first_segment_keeps_the_exact_start_and_windows_are_judged_by_its_second() {
        let start = at("2026-03-10T21:59:59.750Z");
        let tariffs = tariffs();
        let r = PriceList::new(&tariffs, 90_000, 60).rate("+4930", start, 2, Tz::UTC);
        assert_eq!(r.segments[0].start, start);
        assert_eq!(pieces(&r), vec![("peak", 1, 2_000), ("off-peak", 1, 1_000)]);
    }

    #[test]
    fn the_longest_prefix_wins_and_brings_its_connect_fee_and_60_1_increments() {
        let r = rate("+442071234567", "2026-03-10T10:00:00Z", 5, Tz::UTC);
        assert_eq!(pieces(&r), vec![("uk", 60, 600_000)]);
        assert_eq!((r.connect_fee_micros, r.cost_micros), (50_000, 650_000));
        let r = rate("+442071234567", "2026-03-10T10:00:00Z", 61, Tz::UTC);
        assert_eq!(r.billed_seconds, 61);
        assert_eq!(r.cost_micros, 50_000 + 610_000);
    }

    #[test]
    fn a_call_across_22_00_is_split_into_peak_and_off_peak() {
        // 21:58:00 for 5 minutes: 120 s peak, 180 s off-peak.
        let r = rate("+4930123", "2026-03-10T21:58:00Z", 300, Tz::UTC);
        assert_eq!(
            pieces(&r),
            vec![("peak", 120, 240_000), ("off-peak", 180, 180_000)]
        );
        assert_eq!(r.segments[1].start, at("2026-03-10T22:00:00Z"));
        assert_eq!(r.cost_micros, 420_000);
    }

    #[test]
    fn friday_nights_off_peak_runs_into_saturday_then_the_weekend_rate_applies() {
        // Friday 2026-03-13 23:50 for 9 hours: off-peak (a wrapping window
        // belongs to Friday) until Saturday 08:00, then the weekend.
        let r = rate("+4930123", "2026-03-13T23:50:00Z", 9 * 3600, Tz::UTC);
        assert_eq!(
            pieces(&r),
            vec![
                ("off-peak", 8 * 3600 + 600, 8 * 60_000 * 60 + 10 * 60_000),
                ("weekend", 3000, 50 * 30_000),
            ]
        );
    }

    #[test]
    fn a_wrapping_window_covers_the_next_morning_only_after_one_of_its_days() {
        // Sunday 23:59 into Monday: the weekday off-peak window wraps into
        // a morning only after a weekday, so Monday 00:00–08:00 has no
        // tariff in force and the plan's own rate applies.
        let r = rate("+4930123", "2026-03-15T23:59:00Z", 120, Tz::UTC);
        assert_eq!(
            pieces(&r),
            vec![("weekend", 60, 30_000), ("base", 60, 90_000)]
        );
    }

    #[test]
    fn increments_extend_the_call_into_the_next_window() {
        // A 20 s call at 21:59:30 in a tariff with 60 s increments.
        let tariffs = vec![Tariff {
            first_increment_seconds: 60,
            billing_increment_seconds: 60,
            ..tariff("day", "", Some((480, 1320)), 120_000)
        }];
        let r = PriceList::new(&tariffs, 60_000, 60).rate(
            "+4930123",
            at("2026-03-10T21:59:30Z"),
            20,
            Tz::UTC,
        );
        // Billed 60 s from 21:59:30: 30 s in "day", 30 s after 22:00 at base.
        assert_eq!(pieces(&r), vec![("day", 30, 60_000), ("base", 30, 30_000)]);
    }

    #[test]
    fn spring_forward_cuts_at_the_change_and_windows_follow_local_time() {
        // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let tariffs = vec![
            tariff("night", "", Some((0, 180)), 10_000),
            tariff("day", "", Some((180, 1440)), 20_000),
        ];
        let prices = PriceList::new(&tariffs, 0, 1);
        // 00:50 UTC = 01:50 CET, for 20 minutes: 10 min of night until
        // 01:00 UTC (02:00 CET became 03:00 CEST, the day window), then day.
        let r = prices.rate(
            "+49301",
            at("2026-03-29T00:50:00Z"),
            1200,
            Tz::Europe__Berlin,
        );
        assert_eq!(
            pieces(&r),
            vec![("night", 600, 100_000), ("day", 600, 200_000)]
        );
        assert_eq!(r.segments[1].start, at("2026-03-29T01:00:00Z"));
    }

    #[test]
    fn fall_back_repeats_the_hour_and_each_pass_is_rated_by_local_time() {
        // Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC).
        let tariffs = vec![
            tariff("early", "", Some((0, 150)), 10_000),
            tariff("late", "", Some((150, 1440)), 20_000),
        ];
        let prices = PriceList::new(&tariffs, 0, 1);
        // 00:20 UTC = 02:20 CEST, for 60 minutes: 02:20–02:30 early, 02:30–
        // 03:00 CEST late, then 02:00–02:20 CET early again.
        let r = prices.rate(
            "+49301",
            at("2026-10-25T00:20:00Z"),
            3600,
            Tz::Europe__Berlin,
        );
        assert_eq!(
            pieces(&r),
            vec![
                ("early", 600, 100_000),
                ("late", 1800, 600_000),
                ("early", 1200, 200_000),
            ]
        );
    }

    #[test]
    fn tariffs_that_leave_a_choice_open_are_refused_naming_them() {
        let same = vec![
            tariff("a", "49", Some((0, 600)), 1),
            tariff("b", "49", Some((500, 700)), 1),
        ];
        let err = check_tariffs(&same).unwrap_err().to_string();
        assert!(err.contains("\"a\"") && err.contains("\"b\""), "{err}");
        let two_windowless = vec![tariff("a", "", None, 1), tariff("b", "", None, 1)];
        assert!(check_tariffs(&two_windowless).is_err());
        let disjoint_days = vec![
            Tariff {
                days: DaySet::of([5]),
                ..tariff("sat", "", None, 1)
            },
            Tariff {
                days: DaySet::of([6]),
                ..tariff("sun", "", None, 1)
            },
        ];
        assert!(check_tariffs(&disjoint_days).is_ok());
        assert!(check_tariffs(&tariffs()).is_ok());
        let named_twice = vec![tariff("a", "1", None, 1), tariff("a", "2", None, 1)];
        assert!(check_tariffs(&named_twice).is_err());
    }

    #[test]
    fn windows_that_could_cut_a_day_long_call_into_more_than_100_segments_are_refused() {
        // 200 one-minute windows spread over the day: 401 edges.
        let many: Vec<Tariff> = (0..200u16)
            .map(|n| tariff(&format!("w{n}"), "", Some((n * 7, n * 7 + 1)), 1))
            .collect();
        let err = check_tariffs(&many).unwrap_err().to_string();
        assert!(err.starts_with("tariffs"), "{err}");
        assert!(err.contains("more than 100"), "{err}");
        // The longest call under them does reach hundreds of segments.
        let prices = PriceList::new(&many, 90_000, 1);
        let day = prices.rate("+4930123", at("2026-03-02T00:00:00Z"), 86_400, Tz::UTC);
        assert!(day.segments.len() > 100, "{}", day.segments.len());
        assert!(day.segments.len() <= most_segments(&many));
        // Peak and off-peak, a weekend and a prefix: a handful.
        assert!(
            most_segments(&tariffs()) <= 6,
            "{}",
            most_segments(&tariffs())
        );
        // 40 windows spread over the day stay within the bound.
        let spread: Vec<Tariff> = (0..40u16)
            .map(|n| tariff(&format!("w{n}"), "", Some((n * 36, n * 36 + 1)), 1))
            .collect();
        assert!(check_tariffs(&spread).is_ok(), "{}", most_segments(&spread));
    }

    #[test]
    fn random_calls_on_random_tariffs_cost_their_connect_fee_plus_segments_covering_the_billed_time()
     {
        let mut seed: u64 = 0x7a71ff;
        let mut next = move |bound: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % bound
        };
        let callees = ["+4930123", "+442071234", "+12025550123", "112"];
        let prefixes = ["", "4", "44", "49", "1"];
        let mut plans_checked = 0;
        while plans_checked < 300 {
            let count = 1 + next(5);
            let tariffs: Vec<Tariff> = (0..count)
                .map(|n| {
                    let small = |bound: u64, next: &mut dyn FnMut(u64) -> u64| {
                        u16::try_from(next(bound)).unwrap()
                    };
                    let window = match next(3) {
                        0 => None,
                        _ => Some(Window {
                            start: small(1440, &mut next),
                            end: 1 + small(1440, &mut next),
                        }),
                    }
                    .filter(|w| w.start != w.end);
                    Tariff {
                        name: format!("t{n}"),
                        destination_prefix: prefixes[usize::try_from(next(5)).unwrap()].into(),
                        days: DaySet::from_bits(u8::try_from(next(128)).unwrap()),
                        window,
                        per_minute_micros: i64::try_from(next(1_000_000)).unwrap(),
                        connect_fee_micros: i64::try_from(next(100_000)).unwrap(),
                        first_increment_seconds: 1 + i64::try_from(next(120)).unwrap(),
                        billing_increment_seconds: 1 + i64::try_from(next(60)).unwrap(),
                    }
                })
                .collect();
            if check_tariffs(&tariffs).is_err() {
                continue;
            }
            plans_checked += 1;
            let prices = PriceList::new(&tariffs, 90_000, 60);
            for _ in 0..20 {
                let start = at("2026-01-01T00:00:00Z")
                    + TimeDelta::seconds(i64::try_from(next(365 * 86_400)).unwrap());
                let seconds = 1 + i64::try_from(next(86_400)).unwrap();
                let callee = callees[usize::try_from(next(4)).unwrap()];
                let tz = if next(2) == 0 {
                    Tz::UTC
                } else {
                    Tz::Europe__Berlin
                };
                let r = prices.rate(callee, start, seconds, tz);
                assert!(r.segments.len() <= most_segments(&tariffs), "{tariffs:?}");
                let billed: i64 = r.segments.iter().map(|s| s.billed_seconds).sum();
                let cost: i64 = r.segments.iter().map(|s| s.cost_micros).sum();
                assert_eq!(billed, r.billed_seconds);
                assert!(r.billed_seconds >= seconds);
                assert_eq!(r.cost_micros, r.connect_fee_micros + cost);
                assert_eq!(r.segments[0].start, start);
                assert_eq!(prices.rate(callee, start, seconds, tz), r, "deterministic");
                for pair in r.segments.windows(2) {
                    assert_ne!(pair[0].tariff_name, pair[1].tariff_name);
                    assert_eq!(
                        pair[1].start,
                        pair[0].start + TimeDelta::seconds(pair[0].billed_seconds)
                    );
                }
            }
        }
    }
}
