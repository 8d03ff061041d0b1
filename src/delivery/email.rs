//! Email over SMTP (lettre): `smtps://` (TLS from the start) or `smtp://`
//! (STARTTLS required; `?tls=opportunistic` for a local relay that offers
//! none), with an optional user and password in the URL. The URL is never
//! printed: it may hold the password.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// How long one message may take to hand over.
pub const EMAIL_TIMEOUT: Duration = Duration::from_secs(30);

/// An email to send.
#[derive(Debug, Clone)]
pub struct Email {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// `(file name, media type, bytes)`.
    pub attachment: Option<(String, String, Vec<u8>)>,
}

/// Sends emails through one SMTP server.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// A mailer for `serve --smtp-url` and `--smtp-from`; the error never
    /// repeats the URL.
    pub fn new(url: &str, from: &str) -> Result<Mailer, String> {
        let url = match url.split_once("://") {
            Some(("smtp", rest)) if !rest.contains("tls=") => {
                let separator = if rest.contains('?') { '&' } else { '?' };
                format!("{url}{separator}tls=required")
            }
            Some(("smtp" | "smtps", _)) => url.to_owned(),
            _ => return Err("--smtp-url must start with smtp:// or smtps://".to_owned()),
        };
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
            .map_err(|_| "--smtp-url is not a valid SMTP URL".to_owned())?
            .timeout(Some(EMAIL_TIMEOUT))
            .build();
        let from: Mailbox = from
            .parse()
            .map_err(|_| "--smtp-from is not a valid address".to_owned())?;
        Ok(Mailer { transport, from })
    }

    /// `email` as a message ready to send: the plain text and the HTML as
    /// alternatives, the attachment beside them, encoded (the CPU's part of
    /// sending, apart from the network's).
    pub fn compose(&self, email: Email) -> Result<Composed, String> {
        let to: Mailbox = email
            .to
            .parse()
            .map_err(|_| "the customer's email address is not valid".to_owned())?;
        let alternatives = MultiPart::alternative()
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(email.text),
            )
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(email.html),
            );
        let body = match email.attachment {
            Some((file_name, content_type, bytes)) => {
                let content_type = ContentType::parse(&content_type)
                    .map_err(|_| format!("invalid attachment type {content_type}"))?;
                MultiPart::mixed()
                    .multipart(alternatives)
                    .singlepart(Attachment::new(file_name).body(bytes, content_type))
            }
            None => alternatives,
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject)
            .multipart(body)
            .map_err(|err| format!("cannot build the message: {err}"))?;
        Ok(Composed {
            envelope: message.envelope().clone(),
            bytes: message.formatted(),
        })
    }

    /// Sends a composed message.
    pub async fn send(&self, message: &Composed) -> Result<(), String> {
        self.transport
            .send_raw(&message.envelope, &message.bytes)
            .await
            .map(|_| ())
            .map_err(|err| format!("SMTP: {err}"))
    }
}

/// A message encoded for sending.
#[derive(Debug, Clone)]
pub struct Composed {
    envelope: lettre::address::Envelope,
    bytes: Vec<u8>,
}
