//! Accounts, access tokens, API keys and the login throttle.

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::sea_query::{Condition, Query};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, EntityTrait, ExprTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::entities::{access_token, account, api_key, customer_operator, login_failure};
use super::{Store, instant, is_unique_violation, micros};
use crate::domain::access::{Account, AccountScope, ApiKeyInfo, KeyScope, Role};
use crate::domain::credentials::IssuedToken;
use crate::domain::throttle::{
    FORGET_FAILURES_AFTER, LoginAttempt, LoginFailures, reserve_attempt,
};
use crate::domain::validation::shown;
use crate::error::{AppError, AppResult};

/// An account to store, its password already hashed.
#[derive(Debug, Clone)]
pub struct AccountRow {
    pub username: String,
    pub password_hash: String,
    pub role: Role,
    pub operator_id: Option<i64>,
    pub customer_id: Option<i64>,
}

/// A stored credential found by its selector.
#[derive(Debug, Clone)]
pub struct StoredCredential {
    pub secret_hash: String,
    pub account_id: i64,
    /// When an access token stops being accepted; `None` for API keys.
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether an API key was revoked.
    pub revoked: bool,
}

/// An API key's owner and state.
#[derive(Debug, Clone, Copy)]
pub struct ApiKeyState {
    pub account_id: i64,
    pub revoked: bool,
}

/// Access tokens are deleted this long after they expired.
const KEEP_EXPIRED_TOKENS: TimeDelta = TimeDelta::days(1);

impl Store {
    /// Stores a new account; a taken username is `ALREADY_EXISTS`.
    pub async fn create_account(&self, row: AccountRow, now: DateTime<Utc>) -> AppResult<Account> {
        let username = row.username.clone();
        let model = account::ActiveModel {
            id: NotSet,
            username: Set(row.username),
            password_hash: Set(row.password_hash),
            role: Set(row.role.as_str().to_owned()),
            operator_id: Set(row.operator_id),
            customer_id: Set(row.customer_id),
            created_at: Set(micros(now)),
            disabled_at: Set(None),
        };
        match account::Entity::insert(model)
            .exec_with_returning(&self.db)
            .await
        {
            Ok(model) => account_from(model),
            Err(err) if is_unique_violation(&err) => Err(AppError::AlreadyExists(format!(
                "username {} is already in use",
                shown(&username)
            ))),
            Err(err) => Err(err.into()),
        }
    }

    /// Creates an admin account, or sets the password of the admin account
    /// of that name. Another role under the name is `ALREADY_EXISTS`.
    /// Returns the account and whether it was created.
    pub async fn upsert_admin(
        &self,
        username: String,
        password_hash: String,
        now: DateTime<Utc>,
    ) -> AppResult<(Account, bool)> {
        if let Some(existing) = account::Entity::find()
            .filter(account::Column::Username.eq(username.as_str()))
            .one(&self.db)
            .await?
        {
            if existing.role != Role::Admin.as_str() {
                return Err(AppError::AlreadyExists(format!(
                    "username {} belongs to a {} account",
                    shown(&username),
                    existing.role
                )));
            }
            let id = existing.id;
            // A reset admin may sign in again, even if it was disabled.
            account::Entity::update_many()
                .col_expr(account::Column::PasswordHash, password_hash.into())
                .col_expr(account::Column::DisabledAt, Option::<i64>::None.into())
                .filter(account::Column::Id.eq(id))
                .exec(&self.db)
                .await?;
            return Ok((self.account(id).await?, false));
        }
        let row = AccountRow {
            username,
            password_hash,
            role: Role::Admin,
            operator_id: None,
            customer_id: None,
        };
        Ok((self.create_account(row, now).await?, true))
    }

    /// One account, or `NOT_FOUND`.
    pub async fn account(&self, account_id: i64) -> AppResult<Account> {
        let model = account::Entity::find_by_id(account_id)
            .one(&self.db)
            .await?
            .ok_or(AppError::not_found("account", account_id))?;
        account_from(model)
    }

    /// The account of `username` and its password hash, if there is one.
    pub async fn account_for_login(&self, username: &str) -> AppResult<Option<(Account, String)>> {
        let Some(model) = account::Entity::find()
            .filter(account::Column::Username.eq(username))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let hash = model.password_hash.clone();
        Ok(Some((account_from(model)?, hash)))
    }

    /// Reserves a login attempt of `username` at `now`
    /// (`throttle::reserve_attempt`): in one transaction, under the lock of
    /// the username's row, so that attempts on every replica count
    /// together and each sees the ones before it.
    pub async fn reserve_login_attempt(
        &self,
        username: &str,
        now: DateTime<Utc>,
    ) -> AppResult<LoginAttempt> {
        let txn = self.begin_write().await?;
        // Rows of other usernames whose failures are forgotten go.
        login_failure::Entity::delete_many()
            .filter(login_failure::Column::LastFailureAt.lt(micros(now - FORGET_FAILURES_AFTER)))
            .filter(
                login_failure::Column::LockedUntil
                    .is_null()
                    .or(login_failure::Column::LockedUntil.lt(micros(now))),
            )
            .exec(&txn)
            .await?;
        login_failure::Entity::insert(login_failure::ActiveModel {
            username: Set(username.to_owned()),
            failures: Set(0),
            last_failure_at: Set(micros(now)),
            locked_until: Set(None),
        })
        .on_conflict_do_nothing()
        .exec_without_returning(&txn)
        .await?;
        let row = login_failure::Entity::find_by_id(username.to_owned())
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or_else(|| AppError::internal("login failure row vanished"))?;
        let stored = LoginFailures {
            failures: row.failures,
            last_failure_at: instant(row.last_failure_at),
            locked_until: row.locked_until.map(instant),
        };
        let attempt = reserve_attempt(Some(stored), now);
        if let LoginAttempt::Check(next) = attempt {
            login_failure::Entity::update_many()
                .col_expr(login_failure::Column::Failures, next.failures.into())
                .col_expr(
                    login_failure::Column::LastFailureAt,
                    micros(next.last_failure_at).into(),
                )
                .col_expr(
                    login_failure::Column::LockedUntil,
                    next.locked_until.map(micros).into(),
                )
                .filter(login_failure::Column::Username.eq(username))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(attempt)
    }

    /// Forgets the failed logins of `username` (after a successful one).
    pub async fn clear_login_failures(&self, username: &str) -> AppResult<()> {
        login_failure::Entity::delete_many()
            .filter(login_failure::Column::Username.eq(username))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Stores a new access token of `account_id`, and deletes tokens that
    /// expired long ago.
    pub async fn store_access_token(
        &self,
        account_id: i64,
        token: &IssuedToken,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> AppResult<()> {
        access_token::Entity::delete_many()
            .filter(access_token::Column::ExpiresAt.lt(micros(now - KEEP_EXPIRED_TOKENS)))
            .exec(&self.db)
            .await?;
        access_token::Entity::insert(access_token::ActiveModel {
            id: NotSet,
            selector: Set(token.selector.clone()),
            secret_hash: Set(token.secret_hash.clone()),
            account_id: Set(account_id),
            created_at: Set(micros(now)),
            expires_at: Set(micros(expires_at)),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// Stores a new API key of `account_id` and returns its id.
    pub async fn store_api_key(
        &self,
        account_id: i64,
        name: String,
        token: &IssuedToken,
        now: DateTime<Utc>,
    ) -> AppResult<i64> {
        let model = api_key::Entity::insert(api_key::ActiveModel {
            id: NotSet,
            selector: Set(token.selector.clone()),
            secret_hash: Set(token.secret_hash.clone()),
            account_id: Set(account_id),
            created_at: Set(micros(now)),
            name: Set(name),
            revoked_at: Set(None),
        })
        .exec_with_returning(&self.db)
        .await?;
        Ok(model.id)
    }

    /// The access token with this selector, if any.
    pub async fn access_token(&self, selector: &str) -> AppResult<Option<StoredCredential>> {
        Ok(access_token::Entity::find()
            .filter(access_token::Column::Selector.eq(selector))
            .one(&self.db)
            .await?
            .map(|row| StoredCredential {
                secret_hash: row.secret_hash,
                account_id: row.account_id,
                expires_at: Some(instant(row.expires_at)),
                revoked: false,
            }))
    }

    /// The API key with this selector, if any.
    pub async fn api_key(&self, selector: &str) -> AppResult<Option<StoredCredential>> {
        Ok(api_key::Entity::find()
            .filter(api_key::Column::Selector.eq(selector))
            .one(&self.db)
            .await?
            .map(|row| StoredCredential {
                secret_hash: row.secret_hash,
                account_id: row.account_id,
                expires_at: None,
                revoked: row.revoked_at.is_some(),
            }))
    }

    /// The owner and state of API key `key_id`, or `NOT_FOUND`.
    pub async fn api_key_state(&self, key_id: i64) -> AppResult<ApiKeyState> {
        let row = api_key::Entity::find_by_id(key_id)
            .one(&self.db)
            .await?
            .ok_or(AppError::not_found("API key", key_id))?;
        Ok(ApiKeyState {
            account_id: row.account_id,
            revoked: row.revoked_at.is_some(),
        })
    }

    /// Marks API key `key_id` revoked (once; a second revoke keeps the
    /// first time).
    pub async fn revoke_api_key(&self, key_id: i64, now: DateTime<Utc>) -> AppResult<()> {
        api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Some(micros(now)).into())
            .filter(api_key::Column::Id.eq(key_id))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Up to `limit` accounts of `scope` with ids above `after_id`, in id
    /// order.
    pub async fn list_accounts(
        &self,
        scope: AccountScope,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<Account>> {
        let mut query = account::Entity::find()
            .filter(account::Column::Id.gt(after_id))
            .order_by_asc(account::Column::Id)
            .limit(limit);
        if let AccountScope::Operator(operator_id) = scope {
            query = query.filter(
                Condition::any()
                    .add(account::Column::OperatorId.eq(operator_id))
                    .add(
                        account::Column::CustomerId.in_subquery(
                            Query::select()
                                .column(customer_operator::Column::CustomerId)
                                .from(customer_operator::Entity)
                                .and_where(customer_operator::Column::OperatorId.eq(operator_id))
                                .to_owned(),
                        ),
                    ),
            );
        }
        query
            .all(&self.db)
            .await?
            .into_iter()
            .map(account_from)
            .collect()
    }

    /// Up to `limit` API keys of `scope` with ids above `after_id`, in id
    /// order.
    pub async fn list_api_keys(
        &self,
        scope: KeyScope,
        after_id: i64,
        limit: u64,
    ) -> AppResult<Vec<ApiKeyInfo>> {
        let mut query = api_key::Entity::find()
            .filter(api_key::Column::Id.gt(after_id))
            .order_by_asc(api_key::Column::Id)
            .limit(limit);
        query = match scope {
            KeyScope::All => query,
            KeyScope::Account(account_id) => {
                query.filter(api_key::Column::AccountId.eq(account_id))
            }
            KeyScope::OperatorAccounts(operator_id) => query.filter(
                api_key::Column::AccountId.in_subquery(
                    Query::select()
                        .column(account::Column::Id)
                        .from(account::Entity)
                        .and_where(account::Column::OperatorId.eq(operator_id))
                        .and_where(
                            account::Column::Role
                                .is_in([Role::Operator.as_str(), Role::Switch.as_str()]),
                        )
                        .to_owned(),
                ),
            ),
        };
        Ok(query
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| ApiKeyInfo {
                id: row.id,
                name: row.name,
                account_id: row.account_id,
                created_at: instant(row.created_at),
                revoked_at: row.revoked_at.map(instant),
            })
            .collect())
    }

    /// Marks account `account_id` disabled (once; disabling it again keeps
    /// the first time).
    pub async fn disable_account(&self, account_id: i64, now: DateTime<Utc>) -> AppResult<()> {
        account::Entity::update_many()
            .col_expr(account::Column::DisabledAt, Some(micros(now)).into())
            .filter(account::Column::Id.eq(account_id))
            .filter(account::Column::DisabledAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Deletes the access token with this selector: it is refused from then
    /// on. Whether there was one.
    pub async fn delete_access_token(&self, selector: &str) -> AppResult<bool> {
        let deleted = access_token::Entity::delete_many()
            .filter(access_token::Column::Selector.eq(selector))
            .exec(&self.db)
            .await?;
        Ok(deleted.rows_affected > 0)
    }

    /// Whether customer `customer_id` is linked to operator `operator_id`.
    pub async fn is_linked(&self, operator_id: i64, customer_id: i64) -> AppResult<bool> {
        Ok(customer_operator::Entity::find()
            .select_only()
            .column(customer_operator::Column::CustomerId)
            .filter(customer_operator::Column::OperatorId.eq(operator_id))
            .filter(customer_operator::Column::CustomerId.eq(customer_id))
            .into_tuple::<i64>()
            .one(&self.db)
            .await?
            .is_some())
    }
}

fn account_from(model: account::Model) -> AppResult<Account> {
    let role = Role::parse(&model.role).ok_or_else(|| {
        AppError::internal(format!(
            "account {} has unknown role {:?}",
            model.id, model.role
        ))
    })?;
    Ok(Account {
        id: model.id,
        username: model.username,
        role,
        operator_id: model.operator_id,
        customer_id: model.customer_id,
        created_at: instant(model.created_at),
        disabled_at: model.disabled_at.map(instant),
    })
}
