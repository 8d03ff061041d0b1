//! `billing.v1.AccountService`: sign-in, accounts and API keys.

use tonic::{Request, Response, Status};

use super::IdPage;
use super::auth::{caller_may, presented_bearer};
use super::convert::{self, timestamp};
use super::pb::{self, account_service_server::AccountService};
use crate::domain::access::Action;
use crate::domain::access::NewAccount;
use crate::domain::validation as valid;
use crate::error::AppError;
use crate::service::Accounts;

/// The AccountService implementation.
#[derive(Debug, Clone)]
pub struct AccountApi {
    accounts: Accounts,
}

impl AccountApi {
    pub fn new(accounts: Accounts) -> Self {
        AccountApi { accounts }
    }
}

#[tonic::async_trait]
impl AccountService for AccountApi {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let pb::LoginRequest { username, password } = request.into_inner();
        let session = self.accounts.login(&username, &password).await?;
        Ok(Response::new(pb::LoginResponse {
            access_token: session.access_token,
            expires_at: Some(timestamp(session.expires_at)),
            account: Some(session.account.into()),
        }))
    }

    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let principal = caller_may(&request, Action::CreateAccount)?;
        let pb::CreateAccountRequest {
            username,
            password,
            role,
            operator_id,
            customer_id,
        } = request.into_inner();
        let new = NewAccount::new(
            username,
            password,
            convert::role(role),
            operator_id,
            customer_id,
        )?;
        let account = self.accounts.create_account(&principal, new).await?;
        Ok(Response::new(account.into()))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let principal = caller_may(&request, Action::ManageApiKeys)?;
        let pb::CreateApiKeyRequest { name, account_id } = request.into_inner();
        let account_id = valid::optional_id("account_id", account_id)?;
        let (key_id, secret) = self
            .accounts
            .create_api_key(&principal, name, account_id)
            .await?;
        Ok(Response::new(pb::CreateApiKeyResponse { key_id, secret }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let principal = caller_may(&request, Action::ManageApiKeys)?;
        let pb::RevokeApiKeyRequest { key_id } = request.into_inner();
        let key_id = valid::id("key_id", key_id)?;
        let already_revoked = self.accounts.revoke_api_key(&principal, key_id).await?;
        Ok(Response::new(pb::RevokeApiKeyResponse { already_revoked }))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let principal = caller_may(&request, Action::WhoAmI)?;
        let pb::WhoAmIRequest {} = request.into_inner();
        let account = self
            .accounts
            .who_am_i(&principal)
            .await
            .map_err(|err| match err {
                AppError::NotFound(_) => {
                    Status::unauthenticated("the caller's account no longer exists")
                }
                err => err.into(),
            })?;
        Ok(Response::new(account.into()))
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let principal = caller_may(&request, Action::ManageAccounts)?;
        let pb::ListAccountsRequest {
            page_size,
            page_token,
        } = request.into_inner();
        let page = IdPage::of("accounts", Vec::new(), page_size, &page_token)?;
        let accounts = self
            .accounts
            .list_accounts(&principal, page.after_id, page.fetch())
            .await?;
        let (accounts, next_page_token) = page.finish(accounts, |account| account.id);
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: accounts.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let principal = caller_may(&request, Action::ManageApiKeys)?;
        let pb::ListApiKeysRequest {
            account_id,
            page_size,
            page_token,
        } = request.into_inner();
        let account_id = valid::optional_id("account_id", account_id)?;
        let page = IdPage::of(
            "api_keys",
            vec![account_id.unwrap_or(0)],
            page_size,
            &page_token,
        )?;
        let keys = self
            .accounts
            .list_api_keys(&principal, account_id, page.after_id, page.fetch())
            .await?;
        let (keys, next_page_token) = page.finish(keys, |key| key.id);
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: keys.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn disable_account(
        &self,
        request: Request<pb::DisableAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let principal = caller_may(&request, Action::ManageAccounts)?;
        let pb::DisableAccountRequest { account_id } = request.into_inner();
        let account_id = valid::id("account_id", account_id)?;
        let account = self
            .accounts
            .disable_account(&principal, account_id)
            .await?;
        Ok(Response::new(account.into()))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let principal = caller_may(&request, Action::Logout)?;
        let bearer = presented_bearer(&request).unwrap_or_default();
        let pb::LogoutRequest {} = request.into_inner();
        self.accounts.logout(&principal, &bearer).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }
}
