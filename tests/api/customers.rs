//! CustomerService: plans, operators, customers, links and top-ups.

use billing::grpc::pb::{self, PlanKind};
use tonic::Code;

use crate::helpers::{assert_status, spawn_app};

fn plan_request(kind: PlanKind) -> pb::CreatePlanRequest {
    pb::CreatePlanRequest {
        name: "Basic".into(),
        kind: kind.into(),
        currency_code: String::new(),
        monthly_fee_micros: 9_990_000,
        per_minute_micros: 120_000,
        billing_increment_seconds: 0,
        included_minutes: 0,
        tariffs: Vec::new(),
        included_minutes_tariffs: Vec::new(),
    }
}

#[tokio::test]
async fn create_plan_echoes_its_fields_with_documented_defaults() {
    let app = spawn_app().await;
    let mut request = plan_request(PlanKind::Postpaid);
    request.included_minutes = 100;
    let plan = app
        .customers
        .clone()
        .create_plan(request)
        .await
        .unwrap()
        .into_inner();
    assert!(plan.id > 0);
    assert_eq!(plan.name, "Basic");
    assert_eq!(plan.kind(), PlanKind::Postpaid);
    assert_eq!(plan.currency_code, "USD");
    assert_eq!(plan.monthly_fee_micros, 9_990_000);
    assert_eq!(plan.per_minute_micros, 120_000);
    assert_eq!(plan.billing_increment_seconds, 60);
    assert_eq!(plan.included_minutes, 100);

    let listed = app
        .customers
        .clone()
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.plans, vec![plan]);
}

#[tokio::test]
async fn create_plan_rejects_bad_fields_naming_them() {
    let app = spawn_app().await;
    let mut client = app.customers.clone();
    for increment in [3601, -1] {
        let mut request = plan_request(PlanKind::Postpaid);
        request.billing_increment_seconds = increment;
        assert_status(
            client.create_plan(request).await,
            Code::InvalidArgument,
            "billing_increment_seconds",
        );
    }
    assert_status(
        client
            .create_plan(plan_request(PlanKind::Unspecified))
            .await,
        Code::InvalidArgument,
        "kind",
    );
    let mut request = plan_request(PlanKind::Prepaid);
    request.included_minutes = 10;
    assert_status(
        client.create_plan(request).await,
        Code::InvalidArgument,
        "included_minutes",
    );
    let mut request = plan_request(PlanKind::Postpaid);
    request.per_minute_micros = -1;
    assert_status(
        client.create_plan(request).await,
        Code::InvalidArgument,
        "per_minute_micros",
    );
    let mut request = plan_request(PlanKind::Postpaid);
    request.currency_code = "DOLLARS".into();
    assert_status(
        client.create_plan(request).await,
        Code::InvalidArgument,
        "currency_code",
    );
    let mut request = plan_request(PlanKind::Postpaid);
    request.name = "  ".into();
    assert_status(
        client.create_plan(request).await,
        Code::InvalidArgument,
        "name",
    );
    let listed = client
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.plans.is_empty(), "nothing half-written: {listed:?}");
}

#[tokio::test]
async fn operators_are_created_listed_and_unique_by_name() {
    let app = spawn_app().await;
    let north = app.operator("North").await;
    let south = app.operator("South").await;
    assert_status(
        app.customers
            .clone()
            .create_operator(pb::CreateOperatorRequest {
                name: "North".into(),
            })
            .await,
        Code::AlreadyExists,
        "North",
    );
    assert_status(
        app.customers
            .clone()
            .create_operator(pb::CreateOperatorRequest {
                name: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "name",
    );
    let listed = app
        .customers
        .clone()
        .list_operators(pb::ListOperatorsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.operators, vec![north, south]);
}

#[tokio::test]
async fn a_customer_is_created_with_its_operators_and_read_back() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 100_000, 60).await;
    let a = app.operator("A").await;
    let b = app.operator("B").await;
    let created = app
        .customers
        .clone()
        .create_customer(pb::CreateCustomerRequest {
            name: "Ada".into(),
            phone_number: "+14155550100".into(),
            plan_id: plan.id,
            operator_ids: vec![b.id, a.id, b.id],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, "Ada");
    assert_eq!(created.phone_number, "+14155550100");
    assert_eq!(created.plan_id, plan.id);
    assert_eq!(created.operator_ids, vec![a.id, b.id]);
    assert_eq!(created.balance_micros, 0);
    assert!(created.created_at.is_some());
    assert_eq!(app.get_customer(created.id).await, created);
}

#[tokio::test]
async fn create_customer_errors_name_the_problem_and_write_nothing() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 100_000, 60).await;
    let operator = app.operator("A").await;
    let mut client = app.customers.clone();
    let request = |phone: &str, plan_id: i64, operator_ids: Vec<i64>| pb::CreateCustomerRequest {
        name: "Ada".into(),
        phone_number: phone.into(),
        plan_id,
        operator_ids,
        ..Default::default()
    };
    assert_status(
        client
            .create_customer(request("+14155550100", 999, vec![]))
            .await,
        Code::NotFound,
        "plan 999",
    );
    assert_status(
        client
            .create_customer(request("+14155550100", plan.id, vec![operator.id, 777]))
            .await,
        Code::NotFound,
        "operator 777",
    );
    assert_status(
        client
            .create_customer(request("4155550100", plan.id, vec![]))
            .await,
        Code::InvalidArgument,
        "phone_number",
    );
    assert_status(
        client
            .create_customer(request("+14155550100", 0, vec![]))
            .await,
        Code::InvalidArgument,
        "plan_id",
    );
    assert_status(
        client
            .create_customer(request("+14155550100", plan.id, (1..=101).collect()))
            .await,
        Code::InvalidArgument,
        "operator_ids",
    );
    let listed = client
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.customers.is_empty(),
        "nothing half-written: {listed:?}"
    );

    client
        .create_customer(request("+14155550100", plan.id, vec![]))
        .await
        .unwrap();
    assert_status(
        client
            .create_customer(request("+14155550100", plan.id, vec![]))
            .await,
        Code::AlreadyExists,
        "+14155550100",
    );
}

#[tokio::test]
async fn get_customer_of_an_unknown_id_is_not_found() {
    let app = spawn_app().await;
    assert_status(
        app.customers
            .clone()
            .get_customer(pb::GetCustomerRequest { customer_id: 42 })
            .await,
        Code::NotFound,
        "customer 42",
    );
    assert_status(
        app.customers
            .clone()
            .get_customer(pb::GetCustomerRequest { customer_id: -1 })
            .await,
        Code::InvalidArgument,
        "customer_id",
    );
}

#[tokio::test]
async fn linking_an_operator_twice_is_a_no_op() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 100_000, 60).await;
    let operator = app.operator("A").await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    let mut client = app.customers.clone();
    let link = pb::LinkOperatorRequest {
        customer_id: customer.id,
        operator_id: operator.id,
    };
    let first = client.link_operator(link).await.unwrap().into_inner();
    let second = client.link_operator(link).await.unwrap().into_inner();
    assert_eq!(first.operator_ids, vec![operator.id]);
    assert_eq!(second, first);
    assert_status(
        client
            .link_operator(pb::LinkOperatorRequest {
                customer_id: customer.id,
                operator_id: 99,
            })
            .await,
        Code::NotFound,
        "operator 99",
    );
    assert_status(
        client
            .link_operator(pb::LinkOperatorRequest {
                customer_id: 99,
                operator_id: operator.id,
            })
            .await,
        Code::NotFound,
        "customer 99",
    );
}

#[tokio::test]
async fn list_customers_filters_by_operator_and_pages_through_everyone() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 100_000, 60).await;
    let a = app.operator("A").await;
    let b = app.operator("B").await;
    let mut of_a = Vec::new();
    let mut everyone = Vec::new();
    for n in 0..7 {
        let operators = if n % 2 == 0 { vec![a.id] } else { vec![b.id] };
        let customer = app.customer(plan.id, n, operators).await;
        if n % 2 == 0 {
            of_a.push(customer.id);
        }
        everyone.push(customer.id);
    }
    let mut client = app.customers.clone();
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_customers(pb::ListCustomersRequest {
                operator_id: 0,
                page_size: 3,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.customers.len() <= 3);
        seen.extend(page.customers.iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, everyone);

    let filtered = client
        .list_customers(pb::ListCustomersRequest {
            operator_id: a.id,
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        filtered.customers.iter().map(|c| c.id).collect::<Vec<_>>(),
        of_a
    );
    assert!(filtered.next_page_token.is_empty());

    assert_status(
        client
            .list_customers(pb::ListCustomersRequest {
                operator_id: 99,
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "operator 99",
    );
    assert_status(
        client
            .list_customers(pb::ListCustomersRequest {
                page_size: -1,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_size",
    );
    assert_status(
        client
            .list_customers(pb::ListCustomersRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
}

#[tokio::test]
async fn top_up_credits_a_prepaid_balance_once_per_request_id() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Prepaid, 100_000, 60).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    let mut client = app.customers.clone();
    let top_up = |amount_micros: i64, request_id: &str| pb::TopUpRequest {
        customer_id: customer.id,
        amount_micros,
        request_id: request_id.into(),
    };
    let first = client
        .top_up(top_up(10_000_000, "r1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first,
        pb::TopUpResponse {
            balance_micros: 10_000_000,
            duplicate: false
        }
    );
    let retry = client
        .top_up(top_up(10_000_000, "r1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        retry,
        pb::TopUpResponse {
            balance_micros: 10_000_000,
            duplicate: true
        }
    );
    let second = client
        .top_up(top_up(2_500_000, "r2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.balance_micros, 12_500_000);
    assert_status(
        client.top_up(top_up(1, "r1")).await,
        Code::AlreadyExists,
        "r1",
    );
    assert_status(
        client.top_up(top_up(0, "r3")).await,
        Code::InvalidArgument,
        "amount_micros",
    );
    assert_status(
        client.top_up(top_up(-5, "r3")).await,
        Code::InvalidArgument,
        "amount_micros",
    );
    assert_status(
        client.top_up(top_up(5, "")).await,
        Code::InvalidArgument,
        "request_id",
    );
    assert_eq!(
        app.get_customer(customer.id).await.balance_micros,
        12_500_000
    );
}

#[tokio::test]
async fn top_up_is_only_for_prepaid_customers() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 100_000, 60).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    let mut client = app.customers.clone();
    assert_status(
        client
            .top_up(pb::TopUpRequest {
                customer_id: customer.id,
                amount_micros: 5,
                request_id: "r".into(),
            })
            .await,
        Code::FailedPrecondition,
        "prepaid",
    );
    assert_status(
        client
            .top_up(pb::TopUpRequest {
                customer_id: 404,
                amount_micros: 5,
                request_id: "r".into(),
            })
            .await,
        Code::NotFound,
        "customer 404",
    );
}

#[tokio::test]
async fn concurrent_top_ups_with_one_request_id_credit_once() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Prepaid, 100_000, 60).await;
    let customer = app.customer(plan.id, 1, vec![]).await;
    let attempts = (0..16).map(|_| {
        let mut client = app.customers.clone();
        tokio::spawn(async move {
            client
                .top_up(pb::TopUpRequest {
                    customer_id: customer.id,
                    amount_micros: 7_000_000,
                    request_id: "same".into(),
                })
                .await
                .map(|r| r.into_inner())
        })
    });
    let outcomes: Vec<_> = futures_util::future::join_all(attempts).await;
    let mut credited = 0;
    for outcome in outcomes {
        let response = outcome.unwrap().unwrap();
        if !response.duplicate {
            credited += 1;
        }
    }
    assert_eq!(credited, 1);
    assert_eq!(
        app.get_customer(customer.id).await.balance_micros,
        7_000_000
    );
}
