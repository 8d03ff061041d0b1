//! The account use cases: sign-in with its throttle, accounts, API keys,
//! and turning a presented bearer token into the caller's principal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};

use super::Access;
use crate::clock::Clock;
use crate::domain::access::{self, Account, Action, ApiKeyInfo, NewAccount, Principal};
use crate::domain::credentials::{self, TokenKind};
use crate::domain::throttle::LoginAttempt;
use crate::domain::validation::shown;
use crate::error::{AppError, AppResult};
use crate::storage::{AccountRow, Store};

/// Characters of an API key's name, at most.
pub const MAX_KEY_NAME_CHARS: usize = 100;
/// The one message of a failed login, whichever part was wrong.
const LOGIN_FAILED: &str = "wrong username or password";

/// Credentials one process remembers as verified, at most; past it the
/// cache starts over. A few hundred bytes each.
pub const CREDENTIAL_CACHE_ENTRIES: usize = 10_000;

/// A credential this process has verified: what the bearer token's secret
/// must hash to, and whom it acts as.
#[derive(Debug)]
struct Verified {
    secret_hash: String,
    principal: Principal,
    /// When an access token stops being accepted; `None` for API keys.
    expires_at: Option<DateTime<Utc>>,
    /// When it was read from the database.
    read_at: Instant,
}

/// Verified credentials by kind and selector, each trusted for a while
/// (`--credential-cache-seconds`) before it is read again: every RPC is
/// authenticated, and without it each one costs two queries (the
/// credential, its account). Only successes are kept, and the presented
/// secret is still checked against the stored hash on every use, so the
/// cache never admits a token the database would refuse, except one
/// revoked on another replica within the last `ttl`.
#[derive(Debug)]
struct CredentialCache {
    ttl: Duration,
    verified: HashMap<(TokenKind, String), Verified>,
    /// Counts the times the cache was emptied, so a credential read before
    /// a revocation is not cached after it.
    generation: u64,
}

impl CredentialCache {
    fn clear(&mut self) {
        self.verified.clear();
        self.generation += 1;
    }
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct Session {
    pub access_token: String,
    pub expires_at: DateTime<Utc>,
    pub account: Account,
}

/// Requests that may wait for a password-hashing slot, per slot.
pub const PASSWORD_HASH_QUEUE_PER_SLOT: usize = 8;

/// The default of `--password-hash-concurrency`: the number of cores.
pub fn default_password_hash_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// Bounds password hashing (argon2id: 19 MiB and tens of milliseconds of
/// CPU each): `slots` at once, [`PASSWORD_HASH_QUEUE_PER_SLOT`] per slot
/// waiting, and `RESOURCE_EXHAUSTED` beyond, so a burst of logins costs a
/// bounded memory and leaves the runtime's threads to everyone else.
#[derive(Debug, Clone)]
pub struct PasswordHashing {
    /// Held from admission to the end of the hash: running or waiting.
    admitted: Arc<tokio::sync::Semaphore>,
    /// Held while hashing.
    running: Arc<tokio::sync::Semaphore>,
}

impl PasswordHashing {
    /// `slots` hashes at once (at least one), each with
    /// [`PASSWORD_HASH_QUEUE_PER_SLOT`] places in line.
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        PasswordHashing {
            admitted: Arc::new(tokio::sync::Semaphore::new(
                slots.saturating_mul(PASSWORD_HASH_QUEUE_PER_SLOT + 1),
            )),
            running: Arc::new(tokio::sync::Semaphore::new(slots)),
        }
    }

    /// A place in line, or `RESOURCE_EXHAUSTED` when the line is full.
    fn admit(&self) -> AppResult<HashTicket> {
        let admitted = self.admitted.clone().try_acquire_owned().map_err(|_| {
            AppError::ResourceExhausted(
                "too many password checks at once: try again in a moment".to_owned(),
            )
        })?;
        Ok(HashTicket {
            _admitted: admitted,
            running: self.running.clone(),
        })
    }
}

/// An admitted password hash, waiting for its slot.
struct HashTicket {
    _admitted: tokio::sync::OwnedSemaphorePermit,
    running: Arc<tokio::sync::Semaphore>,
}

impl HashTicket {
    /// Runs `work` on the blocking pool once a slot is free.
    async fn run<T: Send + 'static>(
        self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> AppResult<T> {
        let _running = self
            .running
            .acquire_owned()
            .await
            .map_err(AppError::internal)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(AppError::internal)
    }
}

/// The account use cases. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Accounts {
    store: Store,
    clock: Clock,
    access: Access,
    token_ttl: TimeDelta,
    credentials: Arc<Mutex<CredentialCache>>,
    hashing: PasswordHashing,
}

impl Accounts {
    /// Accounts over `store`; access tokens live for `token_ttl`. Every
    /// credential is read from the database on every use; see
    /// [`Accounts::trusting_verified_credentials_for`].
    pub fn new(store: Store, clock: Clock, token_ttl: TimeDelta) -> Self {
        Accounts {
            access: Access::new(store.clone()),
            store,
            clock,
            token_ttl,
            credentials: Arc::new(Mutex::new(CredentialCache {
                ttl: Duration::ZERO,
                verified: HashMap::new(),
                generation: 0,
            })),
            hashing: PasswordHashing::new(default_password_hash_concurrency()),
        }
    }

    /// Hashes a new password within the hashing bound.
    async fn hash_password(&self, password: String) -> AppResult<String> {
        self.hashing
            .admit()?
            .run(move || credentials::hash_password(&password))
            .await?
    }

    /// These accounts, hashing at most `slots` passwords at once.
    pub fn hashing_at_most(mut self, slots: usize) -> Self {
        self.hashing = PasswordHashing::new(slots);
        self
    }

    /// These accounts, trusting a credential verified within the last
    /// `ttl` without reading it again (zero: never). A key revoked through
    /// this process is refused at once; one revoked through another
    /// replica is refused here within `ttl`.
    pub fn trusting_verified_credentials_for(self, ttl: Duration) -> Self {
        if let Ok(mut cache) = self.credentials.lock() {
            cache.ttl = ttl;
            cache.clear();
        }
        self
    }

    /// Signs in. A wrong username and a wrong password fail alike, and take
    /// as long (an unknown username is checked against a decoy hash). Each
    /// attempt is counted in the database before its password is checked
    /// (`throttle::reserve_attempt`), so at most `MAX_LOGIN_FAILURES`
    /// passwords are checked per username per lock window however many
    /// arrive at once; then the username is locked for `LOGIN_LOCK`:
    /// every attempt is `RESOURCE_EXHAUSTED`, even with the right password,
    /// and does not extend the lock. A right password forgets the count.
    pub async fn login(&self, username: &str, password: &str) -> AppResult<Session> {
        // No stored username is invalid, so an invalid one is said so
        // (and never reaches the database).
        credentials::valid_username(username.to_owned())?;
        if password.len() > credentials::MAX_PASSWORD_BYTES {
            return Err(AppError::invalid(
                "password",
                format!(
                    "must have at most {} bytes",
                    credentials::MAX_PASSWORD_BYTES
                ),
            ));
        }
        // Admitted before it is counted: an attempt refused for load is
        // no failed login.
        let ticket = self.hashing.admit()?;
        let now = self.clock.now();
        let reserved = match self.store.reserve_login_attempt(username, now).await? {
            LoginAttempt::Locked(until) => return Err(locked(until, now)),
            LoginAttempt::Check(reserved) => reserved,
        };
        let found = self.store.account_for_login(username).await?;
        let stored_hash = found.as_ref().map_or_else(
            || credentials::decoy_hash().to_owned(),
            |(_, hash)| hash.clone(),
        );
        let attempt = password.to_owned();
        let matches = ticket
            .run(move || credentials::verify_password(&attempt, &stored_hash))
            .await?;
        let account = match found {
            // A disabled account fails as a wrong password does: its
            // username is not confirmed to a guesser.
            Some((account, _)) if matches && account.disabled_at.is_none() => account,
            _ => {
                tracing::info!(
                    username = %shown(username),
                    locked = reserved.locked_until.is_some(),
                    "login failed"
                );
                return Err(AppError::Unauthenticated(LOGIN_FAILED.to_owned()));
            }
        };
        self.store.clear_login_failures(username).await?;
        let now = self.clock.now();
        let token = credentials::issue_token(TokenKind::Access)?;
        let expires_at = now + self.token_ttl;
        self.store
            .store_access_token(account.id, &token, expires_at, now)
            .await?;
        Ok(Session {
            access_token: token.presented,
            expires_at,
            account,
        })
    }

    /// The principal a bearer token acts as: `UNAUTHENTICATED` unless it is
    /// a known, unexpired access token or unrevoked API key.
    pub async fn authenticate(&self, bearer: &str) -> AppResult<Principal> {
        let refused = |why: &str| AppError::Unauthenticated(format!("{why}; sign in with Login"));
        let expired = |expires_at: Option<DateTime<Utc>>| {
            expires_at.is_some_and(|expires_at| expires_at <= self.clock.now())
        };
        let presented = credentials::parse_token(bearer)
            .ok_or_else(|| refused("the bearer token is not a token of this service"))?;
        let key = (presented.kind, presented.selector.clone());
        let mut generation = None;
        // A hit is checked under the lock, so nothing but the principal is
        // copied out of the cache.
        let cached = self.credentials.lock().ok().and_then(|cache| {
            generation = Some(cache.generation);
            let verified = cache
                .verified
                .get(&key)
                .filter(|verified| verified.read_at.elapsed() < cache.ttl)?;
            Some(if !presented.matches(&verified.secret_hash) {
                Err(refused("unknown bearer token"))
            } else if expired(verified.expires_at) {
                Err(refused("the access token has expired"))
            } else {
                Ok(verified.principal.clone())
            })
        });
        if let Some(outcome) = cached {
            return outcome;
        }
        let read_at = Instant::now();
        let stored = match presented.kind {
            TokenKind::Access => self.store.access_token(&presented.selector).await?,
            TokenKind::ApiKey => self.store.api_key(&presented.selector).await?,
        };
        let Some(stored) = stored.filter(|stored| presented.matches(&stored.secret_hash)) else {
            return Err(refused("unknown bearer token"));
        };
        if stored.revoked {
            return Err(refused("the API key was revoked"));
        }
        if expired(stored.expires_at) {
            return Err(refused("the access token has expired"));
        }
        let account = self.store.account(stored.account_id).await?;
        if account.disabled_at.is_some() {
            return Err(refused("the account is disabled"));
        }
        let principal = Principal::of(&account)?;
        if let Ok(mut cache) = self.credentials.lock()
            && !cache.ttl.is_zero()
            && generation == Some(cache.generation)
        {
            if cache.verified.len() >= CREDENTIAL_CACHE_ENTRIES {
                cache.clear();
            }
            cache.verified.insert(
                key,
                Verified {
                    secret_hash: stored.secret_hash,
                    principal: principal.clone(),
                    expires_at: stored.expires_at,
                    read_at,
                },
            );
        }
        Ok(principal)
    }

    /// The caller's own account.
    pub async fn who_am_i(&self, principal: &Principal) -> AppResult<Account> {
        access::permits(principal, Action::WhoAmI)?;
        let Some(account_id) = principal.account_id() else {
            return Err(AppError::FailedPrecondition(
                "authentication is off on this server: the caller has no account".to_owned(),
            ));
        };
        self.store.account(account_id).await
    }

    /// Creates an account (see `domain::access::may_create_account` for
    /// who may create which).
    pub async fn create_account(
        &self,
        principal: &Principal,
        new: NewAccount,
    ) -> AppResult<Account> {
        access::permits(principal, Action::CreateAccount)?;
        let linked = match new.customer_id {
            Some(customer_id) => self.access.sees(principal, customer_id).await?,
            None => false,
        };
        access::may_create_account(principal, &new, linked)?;
        if let Some(operator_id) = new.operator_id {
            self.store.ensure_operator(operator_id).await?;
        }
        if let Some(customer_id) = new.customer_id {
            self.store.ensure_customer(customer_id).await?;
        }
        let password_hash = self.hash_password(new.password).await?;
        let row = AccountRow {
            username: new.username,
            password_hash,
            role: new.role,
            operator_id: new.operator_id,
            customer_id: new.customer_id,
        };
        let account = self.store.create_account(row, self.clock.now()).await?;
        tracing::info!(
            account_id = account.id,
            role = account.role.as_str(),
            "account created"
        );
        Ok(account)
    }

    /// Creates (or resets the password of) an admin account; for the
    /// `create-admin` command. Returns the account and whether it is new.
    pub async fn create_admin(
        &self,
        username: String,
        password: String,
    ) -> AppResult<(Account, bool)> {
        let username = credentials::valid_username(username)?;
        credentials::valid_new_password(&password)?;
        let password_hash = self.hash_password(password).await?;
        self.store
            .upsert_admin(username, password_hash, self.clock.now())
            .await
    }

    /// Creates an API key acting as `account_id` (`None`: the caller's own
    /// account). Returns its id and the secret, which is never shown again.
    pub async fn create_api_key(
        &self,
        principal: &Principal,
        name: String,
        account_id: Option<i64>,
    ) -> AppResult<(i64, String)> {
        access::permits(principal, Action::ManageApiKeys)?;
        let name_chars = name.chars().count();
        if name_chars > MAX_KEY_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(AppError::invalid(
                "name",
                format!(
                    "must have at most {MAX_KEY_NAME_CHARS} characters and no control characters"
                ),
            ));
        }
        let account_id = match account_id.or(principal.account_id()) {
            Some(id) => id,
            None => {
                return Err(AppError::invalid(
                    "account_id",
                    "is required when authentication is off",
                ));
            }
        };
        let owner = self.owner_for(principal, account_id).await?;
        let token = credentials::issue_token(TokenKind::ApiKey)?;
        let key_id = self
            .store
            .store_api_key(owner.id, name, &token, self.clock.now())
            .await?;
        tracing::info!(key_id, account_id = owner.id, "API key created");
        Ok((key_id, token.presented))
    }

    /// Revokes API key `key_id`; returns whether it was revoked before.
    pub async fn revoke_api_key(&self, principal: &Principal, key_id: i64) -> AppResult<bool> {
        access::permits(principal, Action::ManageApiKeys)?;
        let state = match self.store.api_key_state(key_id).await {
            Ok(state) => state,
            // Only an admin may learn that a key does not exist: to anyone
            // else it is a key it may not manage.
            Err(AppError::NotFound(_)) if !is_admin(principal) => {
                access::may_manage_keys_of(principal, None)?;
                return Err(AppError::not_found("API key", key_id));
            }
            Err(err) => return Err(err),
        };
        self.owner_for(principal, state.account_id).await?;
        if !state.revoked {
            self.store.revoke_api_key(key_id, self.clock.now()).await?;
            tracing::info!(key_id, "API key revoked");
        }
        // Whatever this process trusted is read again, so the key is
        // refused here from now on. Revocations are rare.
        if let Ok(mut cache) = self.credentials.lock() {
            cache.clear();
        }
        Ok(state.revoked)
    }

    /// A page of the accounts `principal` may manage: up to `limit` with
    /// ids above `after_id`.
    pub async fn list_accounts(
        &self,
        principal: &Principal,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Account>> {
        let scope = access::account_scope(principal)?;
        self.store.list_accounts(scope, after_id, limit).await
    }

    /// A page of the API keys `principal` may manage, of `account_id` only
    /// when given: up to `limit` with ids above `after_id`.
    pub async fn list_api_keys(
        &self,
        principal: &Principal,
        account_id: Option<i64>,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<ApiKeyInfo>> {
        let owner = match account_id {
            Some(account_id) => Some(self.owner_for(principal, account_id).await?),
            None => None,
        };
        let scope = access::key_scope(principal, owner.as_ref())?;
        self.store.list_api_keys(scope, after_id, limit).await
    }

    /// Disables account `account_id` (see [`access::may_disable`]) and
    /// returns it. Its credentials are refused from now on: at once here,
    /// within the credential cache's time on other replicas.
    pub async fn disable_account(
        &self,
        principal: &Principal,
        account_id: i64,
    ) -> AppResult<Account> {
        access::permits(principal, Action::ManageAccounts)?;
        let target = match self.store.account(account_id).await {
            Ok(target) => Some(target),
            // Only an admin may learn that an account does not exist: to
            // anyone else it is an account it may not disable.
            Err(AppError::NotFound(_)) if !is_admin(principal) => None,
            Err(err) => return Err(err),
        };
        let linked = match (principal, target.as_ref().and_then(|t| t.customer_id)) {
            (Principal::Operator { operator_id, .. }, Some(customer_id)) => {
                self.store.is_linked(*operator_id, customer_id).await?
            }
            _ => false,
        };
        access::may_disable(principal, target.as_ref(), linked)?;
        let target = target.ok_or_else(|| AppError::not_found("account", account_id))?;
        if target.disabled_at.is_none() {
            self.store
                .disable_account(account_id, self.clock.now())
                .await?;
            tracing::info!(account_id, "account disabled");
        }
        if let Ok(mut cache) = self.credentials.lock() {
            cache.clear();
        }
        self.store.account(account_id).await
    }

    /// Ends the session of `bearer`, the access token `principal` presented:
    /// it is refused from now on, here at once and on other replicas within
    /// the credential cache's time.
    pub async fn logout(&self, principal: &Principal, bearer: &str) -> AppResult<()> {
        access::permits(principal, Action::Logout)?;
        let presented = credentials::parse_token(bearer).ok_or_else(|| {
            AppError::FailedPrecondition("no access token was presented to end".to_owned())
        })?;
        if presented.kind != TokenKind::Access {
            return Err(AppError::FailedPrecondition(
                "an API key is not a session: revoke it with RevokeApiKey".to_owned(),
            ));
        }
        self.store.delete_access_token(&presented.selector).await?;
        // Emptied rather than the one entry removed, so that a read of the
        // token in flight cannot put it back.
        if let Ok(mut cache) = self.credentials.lock() {
            cache.clear();
        }
        Ok(())
    }

    /// The account `account_id`, if `principal` may manage its keys. To a
    /// non-admin an unknown account is `PERMISSION_DENIED` like any other
    /// it may not manage.
    async fn owner_for(&self, principal: &Principal, account_id: i64) -> AppResult<Account> {
        let owner = match self.store.account(account_id).await {
            Ok(owner) => Some(owner),
            Err(AppError::NotFound(_)) if !is_admin(principal) => None,
            Err(err) => return Err(err),
        };
        access::may_manage_keys_of(principal, owner.as_ref())?;
        owner.ok_or_else(|| AppError::not_found("account", account_id))
    }
}

fn is_admin(principal: &Principal) -> bool {
    matches!(principal, Principal::Admin { .. } | Principal::System(_))
}

fn locked(until: DateTime<Utc>, now: DateTime<Utc>) -> AppError {
    let seconds = (until - now).num_seconds().max(1);
    AppError::ResourceExhausted(format!(
        "too many failed logins for this username: try again in {seconds} s"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_message_says_how_long_and_never_less_than_a_second() {
        let now = Utc::now();
        let err = locked(now + TimeDelta::seconds(42), now);
        assert!(err.to_string().contains("42 s"), "{err}");
        let err = locked(now, now);
        assert!(err.to_string().contains("1 s"), "{err}");
    }
}
