//! Delivery rules, pure: which deliveries an event causes, when a failed
//! attempt is retried, how a webhook body is signed, and which webhook
//! addresses are allowed.
//!
//! 1. Issuing an invoice causes one `invoice.issued` delivery per webhook of
//!    each of the customer's operators that subscribes to the event, and one
//!    email when the customer has an address and email is configured.
//! 2. A balance alert (`balance.low`, `balance.recovered`) causes the same:
//!    the subscribed webhooks of the customer's operators, and an email.
//! 3. An attempt that fails is retried after the schedule's next delay;
//!    after the last delay's attempt fails too, the delivery is `FAILED`
//!    (`--delivery-retry-schedule` of n delays: n + 1 attempts).
//! 4. A webhook body is signed as `t=<unix seconds>,v1=<hex HMAC-SHA256 of
//!    "<t>.<body>" with the webhook's secret>`.
//! 6. A prepaid balance is low while it is below the customer's threshold.
//!    A write (a batch of stored calls, a top-up) that takes a balance
//!    from at or above the threshold to below it sends one `balance.low`,
//!    however many calls it stored; one that lifts a balance alerted low
//!    back to at or above sends one `balance.recovered`. Each customer
//!    remembers whether a low alert is open; setting or removing the
//!    threshold closes it, without an alert, and a balance that starts
//!    below a threshold is not alerted until it first crosses it.
//! 5. A webhook URL is `https://` to a host that is not, and never resolves
//!    to, a loopback, private, link-local or otherwise non-public address,
//!    unless insecure webhooks are allowed (development and tests).

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::validation::parse_duration;
use crate::error::{AppError, AppResult};

/// What happened, as receivers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    InvoiceIssued,
    BalanceLow,
    BalanceRecovered,
}

impl Event {
    pub const ALL: [Event; 3] = [
        Event::InvoiceIssued,
        Event::BalanceLow,
        Event::BalanceRecovered,
    ];

    /// The event's name, stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::InvoiceIssued => "invoice.issued",
            Event::BalanceLow => "balance.low",
            Event::BalanceRecovered => "balance.recovered",
        }
    }

    /// The event named `name`.
    pub fn parse(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// How a delivery reaches its receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Email,
    Webhook,
}

impl Channel {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }

    /// The channel stored as `name`.
    pub fn parse(name: &str) -> Option<Channel> {
        [Channel::Email, Channel::Webhook]
            .into_iter()
            .find(|c| c.as_str() == name)
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// The status stored as `name`.
    pub fn parse(name: &str) -> Option<DeliveryStatus> {
        [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// An operator's webhook (its secret is not part of it: shown once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: i64,
    pub operator_id: i64,
    pub url: String,
    pub events: Vec<Event>,
    pub created_at: DateTime<Utc>,
}

impl Webhook {
    /// Whether the webhook receives `event`.
    pub fn receives(&self, event: Event) -> bool {
        self.events.contains(&event)
    }
}

/// A delivery to write: what, to whom, by which channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPlan {
    pub event: Event,
    pub channel: Channel,
    pub webhook_id: Option<i64>,
    pub customer_id: i64,
    pub invoice_id: Option<i64>,
}

/// Who hears of a customer's events: its email (when it has one and email
/// is configured) and its operators' webhooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipients {
    pub email: bool,
    pub webhooks: Vec<Webhook>,
}

/// The deliveries `event` of `customer_id` causes (rules 1 and 2).
pub fn deliveries_of(
    event: Event,
    customer_id: i64,
    invoice_id: Option<i64>,
    recipients: &Recipients,
) -> Vec<DeliveryPlan> {
    let mut plans: Vec<DeliveryPlan> = recipients
        .webhooks
        .iter()
        .filter(|webhook| webhook.receives(event))
        .map(|webhook| DeliveryPlan {
            event,
            channel: Channel::Webhook,
            webhook_id: Some(webhook.id),
            customer_id,
            invoice_id,
        })
        .collect();
    if recipients.email {
        plans.push(DeliveryPlan {
            event,
            channel: Channel::Email,
            webhook_id: None,
            customer_id,
            invoice_id,
        });
    }
    plans
}

/// A balance changed by one write, and whether its customer's low alert
/// was open before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceChange {
    pub before_micros: i64,
    pub after_micros: i64,
    pub threshold_micros: Option<i64>,
    pub alerted_low: bool,
}

impl BalanceChange {
    /// The alert the change sends (rule 6); the low alert is open after it
    /// exactly when that is `balance.low`, or it was open and is not
    /// closed by `balance.recovered`.
    pub fn alert(&self) -> Option<Event> {
        let threshold = self.threshold_micros?;
        if self.before_micros >= threshold && self.after_micros < threshold {
            Some(Event::BalanceLow)
        } else if self.alerted_low && self.after_micros >= threshold {
            Some(Event::BalanceRecovered)
        } else {
            None
        }
    }
}

/// A balance alert as it happened: the data of its `balance.low` or
/// `balance.recovered` event, stored with its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceAlert {
    pub customer_id: i64,
    pub balance_micros: i64,
    pub threshold_micros: i64,
    pub currency_code: String,
    pub at: DateTime<Utc>,
}

impl BalanceAlert {
    /// The event's `data`, as webhooks receive it (64-bit integers as
    /// strings, as in the API's JSON).
    pub fn data(&self) -> serde_json::Value {
        serde_json::json!({
            "customerId": self.customer_id.to_string(),
            "balanceMicros": self.balance_micros.to_string(),
            "thresholdMicros": self.threshold_micros.to_string(),
            "currencyCode": self.currency_code,
            "at": self.at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        })
    }

    /// The alert whose [`BalanceAlert::data`] is `text`.
    pub fn from_data(text: &str) -> Option<BalanceAlert> {
        let data: serde_json::Value = serde_json::from_str(text).ok()?;
        let number = |field: &str| data[field].as_str()?.parse::<i64>().ok();
        Some(BalanceAlert {
            customer_id: number("customerId")?,
            balance_micros: number("balanceMicros")?,
            threshold_micros: number("thresholdMicros")?,
            currency_code: data["currencyCode"].as_str()?.to_owned(),
            at: DateTime::parse_from_rfc3339(data["at"].as_str()?)
                .ok()?
                .with_timezone(&Utc),
        })
    }
}

/// A new delivery's public id: `dlv_` and 32 random hex digits.
pub fn new_delivery_id() -> AppResult<String> {
    Ok(format!(
        "dlv_{}",
        hex::encode(super::credentials::random_bytes::<16>()?)
    ))
}

/// The default `--delivery-retry-schedule`.
pub const DEFAULT_RETRY_SCHEDULE: &str = "10s,1m,5m,30m,2h,6h,12h";

/// The delays between attempts (rule 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

/// Most delays a schedule may hold.
const MAX_RETRIES: usize = 50;

impl RetrySchedule {
    /// Parses comma-separated durations: `250ms`, `10s`, `5m`, `2h`, `1d`;
    /// each from 10ms to 7 days, at most 50 of them.
    pub fn parse(text: &str) -> Result<RetrySchedule, String> {
        let delays = text
            .split(',')
            .map(|part| {
                parse_duration(
                    part,
                    Duration::from_millis(10),
                    Duration::from_secs(7 * 86_400),
                    "10ms and 7d",
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.len() > MAX_RETRIES {
            return Err(format!("at most {MAX_RETRIES} delays"));
        }
        Ok(RetrySchedule(delays))
    }

    /// The delay before the next attempt after `attempts` attempts have
    /// failed, or `None` when the delivery has failed for good.
    pub fn after_failures(&self, attempts: u32) -> Option<Duration> {
        let index = usize::try_from(attempts).ok()?.checked_sub(1)?;
        self.0.get(index).copied()
    }
}

/// The `Billing-Signature` header of `body` sent at `unix_seconds` (rule 4).
pub fn signature(secret: &str, unix_seconds: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Checks a webhook URL as given (rule 5): `https` (or, when insecure
/// webhooks are allowed, `http`), a host, no credentials, and no address
/// literal that is not public. Names are checked again when resolved.
pub fn check_webhook_url(url: &str, allow_insecure: bool) -> AppResult<()> {
    let invalid = |reason: &str| AppError::invalid("url", reason);
    if url.len() > 2048 {
        return Err(invalid("is longer than 2048 bytes"));
    }
    let uri: http::Uri = url.parse().map_err(|_| invalid("is not an absolute URL"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_insecure => {}
        Some("http") => {
            return Err(invalid(
                "must be https:// (http:// only with serve --allow-insecure-webhooks)",
            ));
        }
        _ => return Err(invalid("must be an https:// URL")),
    }
    let authority = uri.authority().ok_or_else(|| invalid("must name a host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("must not carry credentials"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid("must name a host"));
    }
    if !allow_insecure {
        if let Ok(ip) = host.parse::<IpAddr>()
            && !is_public(ip)
        {
            return Err(invalid(
                "must not point at a loopback, private or link-local address",
            ));
        }
        let lower = host.to_ascii_lowercase();
        if lower == "localhost" || lower.ends_with(".localhost") {
            return Err(invalid("must not point at a loopback address"));
        }
    }
    Ok(())
}

/// Whether `ip` is a public unicast address a webhook may be sent to.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                // Shared address space (carrier-grade NAT), 100.64.0.0/10.
                || (a == 100 && (64..128).contains(&b))
                // Benchmarking, 198.18.0.0/15; reserved, 240.0.0.0/4.
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // Unique local fc00::/7, link-local fe80::/10.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                // Documentation 2001:db8::/32.
                || (first == 0x2001 && v6.segments()[1] == 0x0db8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_gives_one_delay_per_failure_then_none() {
        let schedule = RetrySchedule::parse("10s, 1m,250ms").unwrap();
        assert_eq!(schedule.after_failures(0), None);
        assert_eq!(schedule.after_failures(1), Some(Duration::from_secs(10)));
        assert_eq!(schedule.after_failures(2), Some(Duration::from_secs(60)));
        assert_eq!(schedule.after_failures(3), Some(Duration::from_millis(250)));
        assert_eq!(schedule.after_failures(4), None);
        assert!(RetrySchedule::parse(DEFAULT_RETRY_SCHEDULE).is_ok());
        // A bare number is seconds, as in every duration flag.
        assert_eq!(
            RetrySchedule::parse("10").unwrap().after_failures(1),
            Some(Duration::from_secs(10))
        );
        for bad in ["", "5ms", "8d", "1x", "1s,,2s"] {
            assert!(RetrySchedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_balance_alerts_once_per_crossing_of_its_threshold() {
        let change = |before_micros, after_micros, alerted_low| BalanceChange {
            before_micros,
            after_micros,
            threshold_micros: Some(1_000),
            alerted_low,
        };
        // Crossing down (to just below), staying down, lifted back to
        // exactly the threshold, staying up.
        assert_eq!(change(1_000, 999, false).alert(), Some(Event::BalanceLow));
        assert_eq!(change(999, 10, true).alert(), None);
        assert_eq!(
            change(10, 1_000, true).alert(),
            Some(Event::BalanceRecovered)
        );
        assert_eq!(change(5_000, 1_000, false).alert(), None);
        // A balance that started below was never alerted: rising above
        // recovers nothing, and falling again within it alerts nothing.
        assert_eq!(change(0, 5_000, false).alert(), None);
        assert_eq!(change(500, 400, false).alert(), None);
        // No threshold, no alerts.
        let untracked = BalanceChange {
            threshold_micros: None,
            ..change(5_000, -5_000, false)
        };
        assert_eq!(untracked.alert(), None);
    }

    #[test]
    fn a_balance_alert_reads_back_from_its_data() {
        let alert = BalanceAlert {
            customer_id: 42,
            balance_micros: -1_500_000,
            threshold_micros: 5_000_000,
            currency_code: "EUR".into(),
            at: DateTime::from_timestamp(1_800_000_000, 123_000_000).unwrap(),
        };
        let text = alert.data().to_string();
        assert!(text.contains(r#""balanceMicros":"-1500000""#), "{text}");
        assert_eq!(BalanceAlert::from_data(&text), Some(alert));
        assert_eq!(BalanceAlert::from_data("{}"), None);
    }

    #[test]
    fn delivery_ids_are_dlv_and_32_hex_digits() {
        let id = new_delivery_id().unwrap();
        assert_eq!(id.len(), 36);
        assert!(id.starts_with("dlv_"));
        assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_delivery_id().unwrap());
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_timestamp_and_body() {
        // RFC 4231 does not cover this framing; the value was computed with
        // Python: hmac.new(b"whsec_test", b"1700000000.{}", sha256).hexdigest()
        assert_eq!(
            signature("whsec_test", 1_700_000_000, b"{}"),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }

    #[test]
    fn webhook_urls_must_be_https_to_public_hosts() {
        assert!(check_webhook_url("https://hooks.example.com/billing", false).is_ok());
        for bad in [
            "http://hooks.example.com/",
            "ftp://hooks.example.com/",
            "https://127.0.0.1/",
            "https://10.1.2.3/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[::ffff:192.168.1.1]/",
            "https://localhost:8443/",
            "https://user:pw@hooks.example.com/",
            "hooks.example.com",
        ] {
            assert!(check_webhook_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_webhook_url("http://127.0.0.1:9000/hook", true).is_ok());
    }

    #[test]
    fn an_event_causes_one_delivery_per_subscribed_webhook_and_one_email() {
        let webhook = |id, events: &[Event]| Webhook {
            id,
            operator_id: 1,
            url: "https://example.com".into(),
            events: events.to_vec(),
            created_at: DateTime::default(),
        };
        let recipients = Recipients {
            email: true,
            webhooks: vec![
                webhook(1, &[Event::InvoiceIssued]),
                webhook(2, &[Event::BalanceLow]),
                webhook(3, &Event::ALL),
            ],
        };
        let plans = deliveries_of(Event::InvoiceIssued, 7, Some(9), &recipients);
        let channels: Vec<(Channel, Option<i64>)> =
            plans.iter().map(|p| (p.channel, p.webhook_id)).collect();
        assert_eq!(
            channels,
            [
                (Channel::Webhook, Some(1)),
                (Channel::Webhook, Some(3)),
                (Channel::Email, None)
            ]
        );
    }
}
