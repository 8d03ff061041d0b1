//! Accounts and access control (issue 7), through the real server with
//! authentication on: every RPC for every kind of caller, with the exact
//! status, and for lists exactly the rows each caller may see.

use std::collections::BTreeSet;

use billing::grpc::pb::account_service_client::AccountServiceClient;
use billing::grpc::pb::call_service_client::CallServiceClient;
use billing::grpc::pb::customer_service_client::CustomerServiceClient;
use billing::grpc::pb::invoice_service_client::InvoiceServiceClient;
use billing::grpc::pb::notification_service_client::NotificationServiceClient;
use billing::grpc::pb::{self, PlanKind, Role};
use billing::service::Accounts;
use billing::storage::Store;
use chrono::TimeDelta;
use tonic::Code;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

use crate::helpers::{AppOptions, Bearer, TestApp, at, call, spawn_app_with, ts};

type Intercepted = InterceptedService<Channel, Bearer>;

/// Clients acting as one caller.
#[derive(Clone)]
struct Caller {
    name: &'static str,
    accounts: AccountServiceClient<Intercepted>,
    customers: CustomerServiceClient<Intercepted>,
    calls: CallServiceClient<Intercepted>,
    invoices: InvoiceServiceClient<Intercepted>,
    notifications: NotificationServiceClient<Intercepted>,
}

impl Caller {
    fn new(name: &'static str, channel: &Channel, bearer: Bearer) -> Self {
        Caller {
            name,
            accounts: AccountServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            customers: CustomerServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            calls: CallServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            invoices: InvoiceServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            notifications: NotificationServiceClient::with_interceptor(channel.clone(), bearer),
        }
    }
}

pub(crate) const PASSWORD: &str = "a long enough password";

/// The world of the matrix: operators A and B, a customer of each with a
/// June call and invoice, and a caller of every kind.
struct World {
    app: TestApp,
    admin: Caller,
    operator_a: Caller,
    operator_b: Caller,
    switch_a: Caller,
    customer_a: Caller,
    customer_b: Caller,
    nobody: Caller,
    bad_token: Caller,
    operator_a_id: i64,
    operator_b_id: i64,
    customer_a_id: i64,
    customer_b_id: i64,
    switch_a_account: i64,
    operator_b_account: i64,
}

async fn spawn_secured() -> TestApp {
    spawn_app_with(AppOptions {
        clock: billing::clock::Clock::starting_at(at(crate::helpers::TEST_NOW)),
        auth: true,
        ..AppOptions::default()
    })
    .await
}

/// Creates the first admin the way `billing create-admin` does.
pub(crate) async fn bootstrap_admin(app: &TestApp) {
    let store = Store::connect(&app.database.url).await.unwrap();
    Accounts::new(store.clone(), app.clock.clone(), TimeDelta::hours(12))
        .create_admin("root".into(), PASSWORD.into())
        .await
        .unwrap();
    store.close().await.unwrap();
}

async fn login(app: &TestApp, username: &str) -> Caller {
    let session = AccountServiceClient::new(app.channel.clone())
        .login(pb::LoginRequest {
            username: username.into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_or_else(|status| panic!("{username} signs in: {status:?}"))
        .into_inner();
    let name: &'static str = Box::leak(username.to_owned().into_boxed_str());
    Caller::new(name, &app.channel, Bearer::new(&session.access_token))
}

async fn account(
    admin: &Caller,
    username: &str,
    role: Role,
    operator_id: i64,
    customer_id: i64,
) -> i64 {
    admin
        .accounts
        .clone()
        .create_account(pb::CreateAccountRequest {
            username: username.into(),
            password: PASSWORD.into(),
            role: role.into(),
            operator_id,
            customer_id,
        })
        .await
        .unwrap_or_else(|status| panic!("account {username}: {status:?}"))
        .into_inner()
        .id
}

async fn world() -> World {
    // Customers join in early June and call in mid June; the matrix runs
    // on 2 July, with June invoiced.
    let app = spawn_app_with(AppOptions {
        clock: billing::clock::Clock::starting_at(at("2026-06-05T00:00:00Z")),
        auth: true,
        ..AppOptions::default()
    })
    .await;
    bootstrap_admin(&app).await;
    let admin = login(&app, "root").await;
    let mut customers = admin.customers.clone();
    let plan = customers
        .create_plan(pb::CreatePlanRequest {
            name: "Prepaid".into(),
            kind: PlanKind::Prepaid.into(),
            currency_code: "USD".into(),
            monthly_fee_micros: 0,
            per_minute_micros: 60_000,
            billing_increment_seconds: 1,
            included_minutes: 0,
            tariffs: Vec::new(),
            included_minutes_tariffs: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let operator = |name: &'static str| {
        let mut customers = customers.clone();
        async move {
            customers
                .create_operator(pb::CreateOperatorRequest { name: name.into() })
                .await
                .unwrap()
                .into_inner()
                .id
        }
    };
    let operator_a_id = operator("A").await;
    let operator_b_id = operator("B").await;
    let customer = |phone: &'static str, operator_id: i64| {
        let mut customers = customers.clone();
        async move {
            customers
                .create_customer(pb::CreateCustomerRequest {
                    name: phone.into(),
                    phone_number: phone.into(),
                    plan_id: plan.id,
                    operator_ids: vec![operator_id],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .id
        }
    };
    let customer_a_id = customer("+14155550001", operator_a_id).await;
    let customer_b_id = customer("+14155550002", operator_b_id).await;
    app.clock.set(at("2026-06-20T00:00:00Z"));
    let admin = login(&app, "root").await;
    for customer_id in [customer_a_id, customer_b_id] {
        let mut june = call(customer_id, 60);
        june.started_at = Some(ts("2026-06-10T10:00:00Z"));
        admin.calls.clone().add_call(june).await.unwrap();
    }
    app.clock.set(at("2026-07-02T00:00:00Z"));
    let admin = login(&app, "root").await;
    admin
        .invoices
        .clone()
        .run_billing_cycle(pb::RunBillingCycleRequest {
            period: Some(pb::BillingPeriod {
                year: 2026,
                month: 6,
            }),
        })
        .await
        .unwrap();
    account(&admin, "op-a", Role::Operator, operator_a_id, 0).await;
    let operator_b_account = account(&admin, "op-b", Role::Operator, operator_b_id, 0).await;
    let switch_a_account = account(&admin, "switch-a", Role::Switch, operator_a_id, 0).await;
    account(&admin, "cust-a", Role::Customer, 0, customer_a_id).await;
    account(&admin, "cust-b", Role::Customer, 0, customer_b_id).await;
    World {
        operator_a: login(&app, "op-a").await,
        operator_b: login(&app, "op-b").await,
        switch_a: login(&app, "switch-a").await,
        customer_a: login(&app, "cust-a").await,
        customer_b: login(&app, "cust-b").await,
        nobody: Caller::new("nobody", &app.channel, Bearer::none()),
        bad_token: Caller::new("bad token", &app.channel, Bearer::new("bat_not_a_token")),
        admin,
        app,
        operator_a_id,
        operator_b_id,
        customer_a_id,
        customer_b_id,
        switch_a_account,
        operator_b_account,
    }
}

impl World {
    /// Every caller with the status it must get; `None` means OK.
    fn expect(&self, expected: [Option<Code>; 6]) -> Vec<(Caller, Option<Code>)> {
        let [
            admin,
            operator_a,
            operator_b,
            switch_a,
            customer_a,
            customer_b,
        ] = expected;
        vec![
            (self.nobody.clone(), Some(Code::Unauthenticated)),
            (self.bad_token.clone(), Some(Code::Unauthenticated)),
            (self.admin.clone(), admin),
            (self.operator_a.clone(), operator_a),
            (self.operator_b.clone(), operator_b),
            (self.switch_a.clone(), switch_a),
            (self.customer_a.clone(), customer_a),
            (self.customer_b.clone(), customer_b),
        ]
    }
}

const OK: Option<Code> = None;
const DENIED: Option<Code> = Some(Code::PermissionDenied);
const HIDDEN: Option<Code> = Some(Code::NotFound);

/// Runs `rpc` as every caller and checks each status.
macro_rules! matrix {
    ($world:expr, $rpc:literal, $expected:expr, |$caller:ident| $call:expr) => {{
        let mut wrong = Vec::new();
        for (caller, expected) in $world.expect($expected) {
            let mut $caller = caller.clone();
            let got = match $call.await {
                Ok(_) => None,
                Err(status) => Some(status.code()),
            };
            if got != expected {
                wrong.push(format!(
                    "{} as {}: got {got:?}, want {expected:?}",
                    $rpc, caller.name
                ));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }};
}

#[tokio::test]
async fn every_rpc_answers_every_kind_of_caller_exactly_as_the_policy_says() {
    let w = world().await;
    let (a, b) = (w.customer_a_id, w.customer_b_id);
    let june = Some(pb::BillingPeriod {
        year: 2026,
        month: 6,
    });
    matrix!(w, "WhoAmI", [OK, OK, OK, OK, OK, OK], |c| c
        .accounts
        .who_am_i(pb::WhoAmIRequest {}));
    matrix!(
        w,
        "CreatePlan",
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED],
        |c| c.customers.create_plan(pb::CreatePlanRequest {
            name: "P".into(),
            kind: PlanKind::Postpaid.into(),
            currency_code: "USD".into(),
            monthly_fee_micros: 1,
            per_minute_micros: 1,
            billing_increment_seconds: 1,
            included_minutes: 0,
            tariffs: Vec::new(),
            included_minutes_tariffs: Vec::new(),
        })
    );
    matrix!(w, "ListPlans", [OK, OK, OK, DENIED, DENIED, DENIED], |c| c
        .customers
        .list_plans(pb::ListPlansRequest::default()));
    let mut n = 0;
    matrix!(
        w,
        "CreateOperator",
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED],
        |c| {
            n += 1;
            c.customers.create_operator(pb::CreateOperatorRequest {
                name: format!("new {n}"),
            })
        }
    );
    matrix!(
        w,
        "ListOperators",
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED],
        |c| c
            .customers
            .list_operators(pb::ListOperatorsRequest::default())
    );
    matrix!(
        w,
        "CreateCustomer",
        [OK, OK, OK, DENIED, DENIED, DENIED],
        |c| {
            n += 1;
            c.customers.create_customer(pb::CreateCustomerRequest {
                name: "New".into(),
                phone_number: format!("+1415555{n:04}"),
                plan_id: 1,
                operator_ids: vec![],
                ..Default::default()
            })
        }
    );
    matrix!(
        w,
        "GetCustomer",
        [OK, OK, HIDDEN, DENIED, OK, HIDDEN],
        |c| c
            .customers
            .get_customer(pb::GetCustomerRequest { customer_id: a })
    );
    matrix!(
        w,
        "ListCustomers",
        [OK, OK, OK, DENIED, DENIED, DENIED],
        |c| c
            .customers
            .list_customers(pb::ListCustomersRequest::default())
    );
    matrix!(
        w,
        "LinkOperator",
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED],
        |c| c.customers.link_operator(pb::LinkOperatorRequest {
            customer_id: b,
            operator_id: w.operator_b_id,
        })
    );
    matrix!(
        w,
        "UpdateCustomer (of A)",
        [OK, OK, HIDDEN, DENIED, DENIED, DENIED],
        |c| c.customers.update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                id: a,
                language: "de".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
    );
    matrix!(
        w,
        "UpdateOperator (A)",
        [OK, OK, DENIED, DENIED, DENIED, DENIED],
        |c| c.customers.update_operator(pb::UpdateOperatorRequest {
            operator: Some(pb::Operator {
                id: w.operator_a_id,
                tax_id: "DE123".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
    );
    matrix!(w, "TopUp", [OK, OK, HIDDEN, DENIED, DENIED, DENIED], |c| {
        n += 1;
        c.customers.top_up(pb::TopUpRequest {
            customer_id: a,
            amount_micros: 1,
            request_id: format!("top-up {n}"),
        })
    });
    matrix!(w, "AddCall", [OK, OK, HIDDEN, OK, DENIED, DENIED], |c| c
        .calls
        .add_call(call(a, 1)));
    matrix!(w, "IngestCalls", [OK, OK, OK, OK, DENIED, DENIED], |c| c
        .calls
        .ingest_calls(tokio_stream::iter(vec![call(a, 1)])));
    matrix!(
        w,
        "AuthorizeCall",
        [OK, OK, HIDDEN, OK, DENIED, DENIED],
        |c| c.calls.authorize_call(pb::AuthorizeCallRequest {
            customer_id: a,
            callee_number: "+4930123".into(),
            started_at: None,
        })
    );
    matrix!(
        w,
        "GetCallHistory",
        [OK, OK, HIDDEN, DENIED, OK, HIDDEN],
        |c| c.calls.get_call_history(pb::GetCallHistoryRequest {
            customer_id: a,
            ..Default::default()
        })
    );
    matrix!(w, "ListCalls", [OK, OK, OK, DENIED, DENIED, DENIED], |c| c
        .calls
        .list_calls(pb::ListCallsRequest::default()));
    matrix!(
        w,
        "GenerateInvoice",
        [OK, OK, HIDDEN, DENIED, OK, HIDDEN],
        |c| c.invoices.generate_invoice(pb::GenerateInvoiceRequest {
            customer_id: a,
            period: june,
        })
    );
    matrix!(
        w,
        "GetMonthInvoice",
        [OK, OK, HIDDEN, DENIED, OK, HIDDEN],
        |c| c.invoices.get_month_invoice(pb::GetMonthInvoiceRequest {
            customer_id: a,
            period: june,
        })
    );
    let june_invoice_id = w
        .admin
        .clone()
        .invoices
        .get_month_invoice(pb::GetMonthInvoiceRequest {
            customer_id: a,
            period: june,
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    matrix!(
        w,
        "GetInvoiceDocument",
        [OK, OK, HIDDEN, DENIED, OK, HIDDEN],
        |c| c
            .invoices
            .get_invoice_document(pb::GetInvoiceDocumentRequest {
                invoice_id: june_invoice_id,
                format: pb::DocumentFormat::Html.into(),
            })
    );
    matrix!(
        w,
        "CreateWebhook",
        [OK, OK, DENIED, DENIED, DENIED, DENIED],
        |c| c.notifications.create_webhook(pb::CreateWebhookRequest {
            operator_id: w.operator_a_id,
            url: "https://hooks.example.com/billing".into(),
            events: Vec::new(),
        })
    );
    matrix!(
        w,
        "ListWebhooks",
        [OK, OK, OK, DENIED, DENIED, DENIED],
        |c| c
            .notifications
            .list_webhooks(pb::ListWebhooksRequest::default())
    );
    matrix!(
        w,
        "DeleteWebhook",
        [HIDDEN, HIDDEN, HIDDEN, DENIED, DENIED, DENIED],
        |c| c.notifications.delete_webhook(pb::DeleteWebhookRequest {
            webhook_id: 999_999
        })
    );
    matrix!(
        w,
        "ListDeliveries",
        [OK, OK, OK, DENIED, DENIED, DENIED],
        |c| c
            .notifications
            .list_deliveries(pb::ListDeliveriesRequest::default())
    );
    matrix!(
        w,
        "RetryDelivery",
        [HIDDEN, HIDDEN, HIDDEN, DENIED, DENIED, DENIED],
        |c| c.notifications.retry_delivery(pb::RetryDeliveryRequest {
            delivery_id: "dlv_unknown".into()
        })
    );
    matrix!(w, "ListInvoices", [OK, OK, OK, DENIED, OK, OK], |c| c
        .invoices
        .list_invoices(pb::ListInvoicesRequest::default()));
    matrix!(
        w,
        "ListInvoices of A",
        [OK, OK, HIDDEN, DENIED, OK, HIDDEN],
        |c| c.invoices.list_invoices(pb::ListInvoicesRequest {
            customer_id: a,
            ..Default::default()
        })
    );
    matrix!(
        w,
        "StreamConsolidated",
        [OK, OK, HIDDEN, DENIED, OK, HIDDEN],
        |c| c
            .invoices
            .stream_consolidated(pb::StreamConsolidatedRequest {
                customer_id: a,
                ..Default::default()
            })
    );
    matrix!(
        w,
        "RunBillingCycle",
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED],
        |c| c
            .invoices
            .run_billing_cycle(pb::RunBillingCycleRequest { period: june })
    );
    matrix!(w, "WatchInvoices", [OK, OK, OK, DENIED, OK, OK], |c| c
        .invoices
        .watch_invoices(pb::WatchInvoicesRequest::default()));
    matrix!(
        w,
        "CreateAccount (customer of A)",
        [OK, OK, DENIED, DENIED, DENIED, DENIED],
        |c| {
            n += 1;
            c.accounts.create_account(pb::CreateAccountRequest {
                username: format!("user {n}"),
                password: PASSWORD.into(),
                role: Role::Customer.into(),
                operator_id: 0,
                customer_id: a,
            })
        }
    );
    matrix!(
        w,
        "CreateAccount (switch of A)",
        [OK, OK, DENIED, DENIED, DENIED, DENIED],
        |c| {
            n += 1;
            c.accounts.create_account(pb::CreateAccountRequest {
                username: format!("user {n}"),
                password: PASSWORD.into(),
                role: Role::Switch.into(),
                operator_id: w.operator_a_id,
                customer_id: 0,
            })
        }
    );
    matrix!(
        w,
        "CreateAccount (operator A)",
        [OK, DENIED, DENIED, DENIED, DENIED, DENIED],
        |c| {
            n += 1;
            c.accounts.create_account(pb::CreateAccountRequest {
                username: format!("user {n}"),
                password: PASSWORD.into(),
                role: Role::Operator.into(),
                operator_id: w.operator_a_id,
                customer_id: 0,
            })
        }
    );
    matrix!(
        w,
        "CreateApiKey (switch of A)",
        [OK, OK, DENIED, DENIED, DENIED, DENIED],
        |c| c.accounts.create_api_key(pb::CreateApiKeyRequest {
            name: "key".into(),
            account_id: w.switch_a_account,
        })
    );
    let key = w
        .admin
        .accounts
        .clone()
        .create_api_key(pb::CreateApiKeyRequest {
            name: "to revoke".into(),
            account_id: w.switch_a_account,
        })
        .await
        .unwrap()
        .into_inner();
    matrix!(
        w,
        "RevokeApiKey (switch of A)",
        [OK, OK, DENIED, DENIED, DENIED, DENIED],
        |c| c
            .accounts
            .revoke_api_key(pb::RevokeApiKeyRequest { key_id: key.key_id })
    );
    matrix!(
        w,
        "CreateApiKey (operator B)",
        [OK, DENIED, OK, DENIED, DENIED, DENIED],
        |c| c.accounts.create_api_key(pb::CreateApiKeyRequest {
            name: "key".into(),
            account_id: w.operator_b_account,
        })
    );
    matrix!(
        w,
        "ListAccounts",
        [OK, OK, OK, DENIED, DENIED, DENIED],
        |c| c.accounts.list_accounts(pb::ListAccountsRequest::default())
    );
    matrix!(
        w,
        "ListApiKeys",
        [OK, OK, OK, DENIED, DENIED, DENIED],
        |c| c.accounts.list_api_keys(pb::ListApiKeysRequest::default())
    );
    matrix!(
        w,
        "ListApiKeys (switch of A)",
        [OK, OK, DENIED, DENIED, DENIED, DENIED],
        |c| c.accounts.list_api_keys(pb::ListApiKeysRequest {
            account_id: w.switch_a_account,
            ..Default::default()
        })
    );
    let spare = account(&w.admin, "spare-switch-a", Role::Switch, w.operator_a_id, 0).await;
    matrix!(
        w,
        "DisableAccount (a switch of A)",
        [OK, OK, DENIED, DENIED, DENIED, DENIED],
        |c| c
            .accounts
            .disable_account(pb::DisableAccountRequest { account_id: spare })
    );
    // Last: every caller's session ends.
    matrix!(w, "Logout", [OK, OK, OK, OK, OK, OK], |c| c
        .accounts
        .logout(pb::LogoutRequest {}));
    matrix!(
        w,
        "WhoAmI after Logout",
        [
            Some(Code::Unauthenticated),
            Some(Code::Unauthenticated),
            Some(Code::Unauthenticated),
            Some(Code::Unauthenticated),
            Some(Code::Unauthenticated),
            Some(Code::Unauthenticated)
        ],
        |c| c.accounts.who_am_i(pb::WhoAmIRequest {})
    );
}

fn ids<T>(rows: &[T], id: impl Fn(&T) -> i64) -> BTreeSet<i64> {
    rows.iter().map(id).collect()
}

#[tokio::test]
async fn lists_show_each_caller_exactly_the_rows_it_may_see() {
    let w = world().await;
    let (a, b) = (w.customer_a_id, w.customer_b_id);
    let customers_of = |caller: &Caller| {
        let mut client = caller.customers.clone();
        async move {
            let page = client
                .list_customers(pb::ListCustomersRequest::default())
                .await
                .unwrap()
                .into_inner();
            ids(&page.customers, |c| c.id)
        }
    };
    assert_eq!(customers_of(&w.admin).await, BTreeSet::from([a, b]));
    assert_eq!(customers_of(&w.operator_a).await, BTreeSet::from([a]));
    assert_eq!(customers_of(&w.operator_b).await, BTreeSet::from([b]));
    let calls_of = |caller: &Caller| {
        let mut client = caller.calls.clone();
        async move {
            let page = client
                .list_calls(pb::ListCallsRequest::default())
                .await
                .unwrap()
                .into_inner();
            ids(&page.calls, |c| c.customer_id)
        }
    };
    assert_eq!(calls_of(&w.admin).await, BTreeSet::from([a, b]));
    assert_eq!(calls_of(&w.operator_a).await, BTreeSet::from([a]));
    assert_eq!(calls_of(&w.operator_b).await, BTreeSet::from([b]));
    let invoices_of = |caller: &Caller| {
        let mut client = caller.invoices.clone();
        async move {
            let page = client
                .list_invoices(pb::ListInvoicesRequest::default())
                .await
                .unwrap()
                .into_inner();
            ids(&page.invoices, |i| i.customer_id)
        }
    };
    assert_eq!(invoices_of(&w.admin).await, BTreeSet::from([a, b]));
    assert_eq!(invoices_of(&w.operator_a).await, BTreeSet::from([a]));
    assert_eq!(invoices_of(&w.customer_a).await, BTreeSet::from([a]));
    assert_eq!(invoices_of(&w.customer_b).await, BTreeSet::from([b]));
    // The feed of operator A replays only A's invoice.
    let mut feed = w
        .operator_a
        .invoices
        .clone()
        .watch_invoices(pb::WatchInvoicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = feed.message().await.unwrap().unwrap();
    assert_eq!(first.customer_id, a);
    // Asking for another operator's rows is refused, not emptied.
    let status = w
        .operator_a
        .customers
        .clone()
        .list_customers(pb::ListCustomersRequest {
            operator_id: w.operator_b_id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // A customer created by an operator is linked to it.
    let created = w
        .operator_a
        .customers
        .clone()
        .create_customer(pb::CreateCustomerRequest {
            name: "Linked".into(),
            phone_number: "+14155559999".into(),
            plan_id: 1,
            operator_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.operator_ids, vec![w.operator_a_id]);
    w.app.stop().await;
}

#[tokio::test]
async fn a_switch_stream_stores_its_operators_calls_and_reports_others_as_not_found() {
    let w = world().await;
    let report = w
        .switch_a
        .calls
        .clone()
        .ingest_calls(tokio_stream::iter(vec![
            call(w.customer_a_id, 60),
            call(w.customer_b_id, 60),
            call(w.customer_a_id, 30),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((report.accepted, report.rejected), (2, 1), "{report:?}");
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].index, 1);
    assert_eq!(report.errors[0].code, Code::NotFound as i32);
    let history = w
        .admin
        .calls
        .clone()
        .get_call_history(pb::GetCallHistoryRequest {
            customer_id: w.customer_b_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.calls.len(), 1, "only the June call of B");
}

#[tokio::test]
async fn a_wrong_username_and_a_wrong_password_fail_alike() {
    let app = spawn_secured().await;
    bootstrap_admin(&app).await;
    let mut accounts = AccountServiceClient::new(app.channel.clone());
    let attempt = |username: &str, password: &str| pb::LoginRequest {
        username: username.into(),
        password: password.into(),
    };
    let unknown = accounts
        .login(attempt("nobody", PASSWORD))
        .await
        .unwrap_err();
    let wrong = accounts
        .login(attempt("root", "wrong password!"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(unknown.message(), wrong.message());
    let session = accounts
        .login(attempt("root", PASSWORD))
        .await
        .unwrap()
        .into_inner();
    let account = session.account.unwrap();
    assert_eq!(
        (account.username.as_str(), account.role),
        ("root", Role::Admin as i32)
    );
    assert!(session.access_token.len() >= 32);
}

#[tokio::test]
async fn ten_failed_logins_lock_the_username_for_a_minute_even_for_the_right_password() {
    let app = spawn_secured().await;
    bootstrap_admin(&app).await;
    let mut accounts = AccountServiceClient::new(app.channel.clone());
    let attempt = |password: &str| pb::LoginRequest {
        username: "root".into(),
        password: password.into(),
    };
    for n in 1..=10 {
        let status = accounts
            .login(attempt("wrong password!"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "attempt {n}");
    }
    let locked = accounts.login(attempt(PASSWORD)).await.unwrap_err();
    assert_eq!(locked.code(), Code::ResourceExhausted, "{locked:?}");
    // Another username is not affected.
    let other = accounts
        .login(pb::LoginRequest {
            username: "someone".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::Unauthenticated);
    // 58 s later still locked; after 60 s the right password works.
    let start = app.clock.now();
    app.clock.set(start + TimeDelta::seconds(58));
    let still = accounts.login(attempt(PASSWORD)).await.unwrap_err();
    assert_eq!(still.code(), Code::ResourceExhausted, "{still:?}");
    app.clock.set(start + TimeDelta::seconds(61));
    accounts.login(attempt(PASSWORD)).await.unwrap();
}

#[tokio::test]
async fn an_access_token_expires_after_its_lifetime() {
    let app = spawn_secured().await;
    bootstrap_admin(&app).await;
    let admin = login(&app, "root").await;
    admin
        .accounts
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap();
    let start = app.clock.now();
    app.clock.set(start + TimeDelta::hours(11));
    admin
        .accounts
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap();
    app.clock
        .set(start + TimeDelta::hours(12) + TimeDelta::seconds(1));
    let status = admin
        .accounts
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
}

#[tokio::test]
async fn an_api_key_acts_as_its_account_until_revoked() {
    let w = world().await;
    let key = w
        .operator_a
        .accounts
        .clone()
        .create_api_key(pb::CreateApiKeyRequest {
            name: "switch 1".into(),
            account_id: w.switch_a_account,
        })
        .await
        .unwrap()
        .into_inner();
    let switch = Caller::new("switch key", &w.app.channel, Bearer::new(&key.secret));
    let me = switch
        .accounts
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, w.switch_a_account);
    assert_eq!(me.role, Role::Switch as i32);
    switch
        .calls
        .clone()
        .add_call(call(w.customer_a_id, 5))
        .await
        .unwrap();
    let revoked = w
        .operator_a
        .accounts
        .clone()
        .revoke_api_key(pb::RevokeApiKeyRequest { key_id: key.key_id })
        .await
        .unwrap()
        .into_inner();
    assert!(!revoked.already_revoked);
    let status = switch
        .calls
        .clone()
        .add_call(call(w.customer_a_id, 5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Operator B may not revoke A's keys, and learns nothing about them.
    let status = w
        .operator_b
        .accounts
        .clone()
        .revoke_api_key(pb::RevokeApiKeyRequest { key_id: key.key_id })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn create_account_names_the_field_at_fault() {
    let w = world().await;
    let mut accounts = w.admin.accounts.clone();
    let request = |role: Role, operator_id, customer_id, password: &str| pb::CreateAccountRequest {
        username: "new".into(),
        password: password.into(),
        role: role.into(),
        operator_id,
        customer_id,
    };
    let cases = [
        (
            request(Role::Operator, 0, 0, PASSWORD),
            Code::InvalidArgument,
            "operator_id",
        ),
        (
            request(Role::Customer, 0, 0, PASSWORD),
            Code::InvalidArgument,
            "customer_id",
        ),
        (
            request(Role::Switch, w.operator_a_id, w.customer_a_id, PASSWORD),
            Code::InvalidArgument,
            "customer_id",
        ),
        (
            request(Role::Customer, w.operator_a_id, w.customer_a_id, PASSWORD),
            Code::InvalidArgument,
            "operator_id",
        ),
        (
            request(Role::Unspecified, 0, 0, PASSWORD),
            Code::InvalidArgument,
            "role",
        ),
        (
            request(Role::Admin, 0, 0, "short"),
            Code::InvalidArgument,
            "password",
        ),
        (
            request(Role::Operator, 999, 0, PASSWORD),
            Code::NotFound,
            "operator 999",
        ),
        (
            request(Role::Customer, 0, 999, PASSWORD),
            Code::NotFound,
            "customer 999",
        ),
    ];
    for (request, code, field) in cases {
        let status = accounts.create_account(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
        assert!(status.message().contains(field), "{request:?}: {status:?}");
    }
    let mut taken = request(Role::Admin, 0, 0, PASSWORD);
    taken.username = "op-a".into();
    let status = accounts.create_account(taken).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
}

#[tokio::test]
async fn a_caller_that_may_not_call_an_rpc_is_denied_before_its_request_is_validated() {
    let w = world().await;
    let status = w
        .operator_a
        .customers
        .clone()
        .create_plan(pb::CreatePlanRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = w
        .switch_a
        .calls
        .clone()
        .get_call_history(pb::GetCallHistoryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // One that may call it hears what is wrong with the request.
    let status = w
        .operator_a
        .calls
        .clone()
        .get_call_history(pb::GetCallHistoryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn a_key_revoked_through_one_replica_is_refused_by_replicas_that_read_it_again() {
    // Three replicas on one database: A revokes; B reads credentials on
    // every RPC (--credential-cache-seconds 0); C trusts what it verified
    // for 300 s, the documented lag of a revocation through another replica.
    let a = spawn_secured().await;
    bootstrap_admin(&a).await;
    let replica = |cache_seconds| {
        spawn_app_with(AppOptions {
            clock: a.clock.clone(),
            auth: true,
            database: Some(a.database.clone()),
            credential_cache: std::time::Duration::from_secs(cache_seconds),
            ..AppOptions::default()
        })
    };
    let (b, c) = (replica(0).await, replica(300).await);
    let admin = login(&a, "root").await;
    let key = admin
        .accounts
        .clone()
        .create_api_key(pb::CreateApiKeyRequest {
            name: "switch".into(),
            account_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let who = |app: &TestApp, secret: &str| {
        let mut accounts = Caller::new("key", &app.channel, Bearer::new(secret)).accounts;
        async move { accounts.who_am_i(pb::WhoAmIRequest {}).await }
    };
    for app in [&a, &b, &c] {
        assert_eq!(
            who(app, &key.secret).await.unwrap().into_inner().username,
            "root"
        );
    }
    // The same key id with another secret is refused, though C trusts the
    // key: the secret is checked on every use.
    let mut forged = key.secret.clone();
    let last = if forged.ends_with('0') { "1" } else { "0" };
    forged.replace_range(forged.len() - 1.., last);
    for app in [&a, &b, &c] {
        assert_eq!(
            who(app, &forged).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    admin
        .accounts
        .clone()
        .revoke_api_key(pb::RevokeApiKeyRequest { key_id: key.key_id })
        .await
        .unwrap();
    for app in [&a, &b] {
        let status = who(app, &key.secret).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("revoked"), "{status:?}");
    }
    assert_eq!(
        who(&c, &key.secret).await.unwrap().into_inner().username,
        "root",
        "C has not read the key again yet"
    );
}

#[tokio::test]
async fn a_switch_may_push_calls_of_a_customer_linked_after_it_was_refused() {
    // A link once seen is remembered (links are never removed); one not
    // found is read again, so linking a customer takes effect at once.
    let w = world().await;
    let mut switch = w.switch_a.calls.clone();
    switch.add_call(call(w.customer_a_id, 5)).await.unwrap();
    let status = switch.add_call(call(w.customer_b_id, 5)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    w.admin
        .customers
        .clone()
        .link_operator(pb::LinkOperatorRequest {
            customer_id: w.customer_b_id,
            operator_id: w.operator_a_id,
        })
        .await
        .unwrap();
    let stored = switch
        .add_call(call(w.customer_b_id, 5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.call.unwrap().customer_id, w.customer_b_id);
    switch.add_call(call(w.customer_a_id, 6)).await.unwrap();
}

/// One account cannot take every `WatchInvoices` slot: beyond
/// `--max-invoice-watchers-per-account` (16 by default) its next stream is
/// `RESOURCE_EXHAUSTED`, while another account still gets one.
#[tokio::test]
async fn one_account_holds_at_most_16_invoice_watchers_and_others_still_get_theirs() {
    let app = spawn_secured().await;
    bootstrap_admin(&app).await;
    let admin = login(&app, "root").await;
    let operator_id = admin
        .customers
        .clone()
        .create_operator(pb::CreateOperatorRequest {
            name: "Watchers Telecom".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    account(&admin, "op-watch", Role::Operator, operator_id, 0).await;
    let operator = login(&app, "op-watch").await;
    let mut open = Vec::new();
    for n in 0..16 {
        let stream = operator
            .invoices
            .clone()
            .watch_invoices(pb::WatchInvoicesRequest::default())
            .await
            .unwrap_or_else(|status| panic!("watcher {n}: {status:?}"));
        open.push(stream);
    }
    let refused = operator
        .invoices
        .clone()
        .watch_invoices(pb::WatchInvoicesRequest::default())
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("--max-invoice-watchers-per-account"),
        "{refused:?}"
    );
    admin
        .invoices
        .clone()
        .watch_invoices(pb::WatchInvoicesRequest::default())
        .await
        .expect("another account still watches");
}

/// One switch cannot take every `IngestCalls` slot: beyond
/// `--max-ingest-streams-per-account` (8 by default) open streams its next
/// one is `RESOURCE_EXHAUSTED`, while another account's upload is served.
#[tokio::test]
async fn one_account_holds_at_most_8_ingest_streams_and_others_still_upload() {
    let w = world().await;
    let customer_a_id = w.customer_a_id;
    let stored = || {
        let mut calls = w.admin.calls.clone();
        async move {
            calls
                .get_call_history(pb::GetCallHistoryRequest {
                    customer_id: customer_a_id,
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .calls
                .len()
        }
    };
    let before = stored().await;
    let record = move |key: String| {
        let mut record = call(customer_a_id, 60);
        record.call_id = key;
        record
    };
    let mut open = Vec::new();
    for n in 0..8 {
        let (records, stream) = tokio::sync::mpsc::channel(4);
        let mut switch = w.switch_a.calls.clone();
        let upload = tokio::spawn(async move {
            switch
                .ingest_calls(tokio_stream::wrappers::ReceiverStream::new(stream))
                .await
        });
        records.send(record(format!("open-{n}"))).await.unwrap();
        open.push((records, upload));
    }
    // Every stream is served once its record is stored (within the flush
    // interval).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while stored().await < before + 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the streams were not served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let refused = w
        .switch_a
        .calls
        .clone()
        .ingest_calls(tokio_stream::iter(vec![record("ninth".into())]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("--max-ingest-streams-per-account"),
        "{refused:?}"
    );
    let served = w
        .admin
        .calls
        .clone()
        .ingest_calls(tokio_stream::iter(vec![record("admin".into())]))
        .await
        .expect("another account still uploads")
        .into_inner();
    assert_eq!(served.accepted, 1);
    for (records, upload) in open {
        drop(records);
        assert_eq!(upload.await.unwrap().unwrap().into_inner().accepted, 1);
    }
}

/// The next invoice of a feed, failing the test if none comes in time.
async fn next(feed: &mut tonic::Streaming<pb::Invoice>) -> pb::Invoice {
    tokio::time::timeout(std::time::Duration::from_secs(30), feed.message())
        .await
        .expect("an invoice in time")
        .unwrap()
        .unwrap()
}

/// Live invoices reach only the watchers allowed to see them: an operator's
/// watcher is told of its customers' invoices only, a customer's of its
/// own, the admin's of all, each as it is issued.
#[tokio::test]
async fn each_watcher_is_told_live_only_of_the_invoices_it_may_see() {
    let w = world().await;
    // After June's invoices: only what is issued from now on.
    let june = w
        .admin
        .invoices
        .clone()
        .list_invoices(pb::ListInvoicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .invoices;
    let after_invoice_id = june.iter().map(|i| i.id).max().unwrap();
    let watch = |caller: &Caller| {
        let mut invoices = caller.invoices.clone();
        async move {
            invoices
                .watch_invoices(pb::WatchInvoicesRequest { after_invoice_id })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut admin_feed = watch(&w.admin).await;
    let mut operator_a_feed = watch(&w.operator_a).await;
    let mut operator_b_feed = watch(&w.operator_b).await;
    let mut customer_a_feed = watch(&w.customer_a).await;
    let (a, b) = (w.customer_a_id, w.customer_b_id);
    for (month, order) in [(7, [b, a]), (8, [a, b])] {
        w.app
            .clock
            .set(at(&format!("2026-{:02}-02T00:00:00Z", month + 1)));
        let admin = login(&w.app, "root").await;
        for customer_id in order {
            admin
                .invoices
                .clone()
                .generate_invoice(pb::GenerateInvoiceRequest {
                    customer_id,
                    period: Some(pb::BillingPeriod { year: 2026, month }),
                })
                .await
                .unwrap();
        }
        for customer_id in order {
            assert_eq!(next(&mut admin_feed).await.customer_id, customer_id);
        }
        let told = next(&mut operator_a_feed).await;
        assert_eq!((told.customer_id, told.period.unwrap().month), (a, month));
        let told = next(&mut operator_b_feed).await;
        assert_eq!((told.customer_id, told.period.unwrap().month), (b, month));
        let told = next(&mut customer_a_feed).await;
        assert_eq!((told.customer_id, told.period.unwrap().month), (a, month));
    }
}

/// An operator's account housekeeping: it lists its own accounts and its
/// customers' (no one else's), lists its keys without their secrets,
/// disables its switch (whose token and key are refused at once and which
/// can no longer sign in), and no admin can disable itself.
#[tokio::test]
async fn a_disabled_account_is_refused_at_once_and_lists_show_only_ones_own() {
    let w = world().await;
    let key = w
        .operator_a
        .accounts
        .clone()
        .create_api_key(pb::CreateApiKeyRequest {
            name: "rack 7".into(),
            account_id: w.switch_a_account,
        })
        .await
        .unwrap()
        .into_inner();
    let switch_key = Caller::new("switch key", &w.app.channel, Bearer::new(&key.secret));
    switch_key
        .accounts
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap();
    // Operator A sees its own accounts and its customer's, paged.
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = w
            .operator_a
            .accounts
            .clone()
            .list_accounts(pb::ListAccountsRequest {
                page_size: 1,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.accounts.into_iter().map(|a| a.username));
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    assert_eq!(names, ["op-a", "switch-a", "cust-a"]);
    let keys = w
        .operator_a
        .accounts
        .clone()
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert_eq!(keys.len(), 1);
    assert_eq!((keys[0].id, keys[0].name.as_str()), (key.key_id, "rack 7"));
    assert!(keys[0].revoked_at.is_none());
    assert!(
        !format!("{keys:?}").contains(&key.secret),
        "a listed key shows its secret"
    );
    let none = w
        .operator_b
        .accounts
        .clone()
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert!(none.is_empty(), "{none:?}");

    let disabled = w
        .operator_a
        .accounts
        .clone()
        .disable_account(pb::DisableAccountRequest {
            account_id: w.switch_a_account,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(disabled.disabled_at.is_some());
    for (what, caller) in [("token", &w.switch_a), ("API key", &switch_key)] {
        let refused = caller
            .calls
            .clone()
            .add_call(call(w.customer_a_id, 60))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {refused:?}");
    }
    let login = AccountServiceClient::new(w.app.channel.clone())
        .login(pb::LoginRequest {
            username: "switch-a".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(login.code(), Code::Unauthenticated, "{login:?}");
    // Another operator's account is not operator A's to disable.
    let denied = w
        .operator_a
        .accounts
        .clone()
        .disable_account(pb::DisableAccountRequest {
            account_id: w.operator_b_account,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let me = w
        .admin
        .accounts
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    let myself = w
        .admin
        .accounts
        .clone()
        .disable_account(pb::DisableAccountRequest { account_id: me.id })
        .await
        .unwrap_err();
    assert_eq!(myself.code(), Code::FailedPrecondition, "{myself:?}");
}

/// Logout ends the session of the token presented, and only that one; an
/// API key is not a session.
#[tokio::test]
async fn logout_ends_the_presented_session_only() {
    let w = world().await;
    let second = login(&w.app, "op-a").await;
    w.operator_a
        .accounts
        .clone()
        .logout(pb::LogoutRequest {})
        .await
        .unwrap();
    let ended = w
        .operator_a
        .accounts
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    second
        .accounts
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("the other session goes on");
    let key = second
        .accounts
        .clone()
        .create_api_key(pb::CreateApiKeyRequest {
            name: "ops".into(),
            account_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let by_key = Caller::new("key", &w.app.channel, Bearer::new(&key.secret));
    let refused = by_key
        .accounts
        .clone()
        .logout(pb::LogoutRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("RevokeApiKey"), "{refused:?}");
}

/// A disabled account is refused by the other replicas too, within their
/// `--credential-cache-seconds`: here a replica that trusts a verified
/// credential for one second.
#[tokio::test]
async fn another_replica_refuses_a_disabled_account_within_its_credential_cache_time() {
    let w = world().await;
    let other = spawn_app_with(AppOptions {
        clock: w.app.clock.clone(),
        database: Some(w.app.database.clone()),
        auth: true,
        credential_cache: std::time::Duration::from_secs(1),
        ..AppOptions::default()
    })
    .await;
    let session = AccountServiceClient::new(other.channel.clone())
        .login(pb::LoginRequest {
            username: "switch-a".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let switch_there = Caller::new(
        "switch on the other replica",
        &other.channel,
        Bearer::new(&session.access_token),
    );
    // Verified, and so trusted by the other replica's cache for a second.
    switch_there
        .accounts
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap();
    w.admin
        .accounts
        .clone()
        .disable_account(pb::DisableAccountRequest {
            account_id: w.switch_a_account,
        })
        .await
        .unwrap();
    let disabled_at = std::time::Instant::now();
    loop {
        match switch_there
            .accounts
            .clone()
            .who_am_i(pb::WhoAmIRequest {})
            .await
        {
            Err(status) if status.code() == Code::Unauthenticated => break,
            Err(status) => panic!("{status:?}"),
            Ok(_) => {
                assert!(
                    disabled_at.elapsed() < std::time::Duration::from_secs(10),
                    "still accepted long after the credential cache's second"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
