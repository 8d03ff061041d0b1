//! Who receives what: a customer's email and language, an operator's
//! issuer details, and their updates by AIP-134 field masks.

use billing::grpc::pb::{self, PlanKind};
use tonic::Code;

use crate::helpers::{assert_status, spawn_app};

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

#[tokio::test]
async fn a_customers_email_and_language_are_set_at_creation_and_updated_by_mask() {
    let app = spawn_app().await;
    let plan = app.plan(PlanKind::Postpaid, 60_000, 1).await;
    let mut customers = app.customers.clone();
    let created = customers
        .create_customer(pb::CreateCustomerRequest {
            name: "Ada".into(),
            phone_number: "+14155550100".into(),
            plan_id: plan.id,
            email: "ada@example.org".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (created.email.as_str(), created.language.as_str()),
        ("ada@example.org", "en")
    );
    // Only what the mask names changes, whatever else the request holds.
    let updated = customers
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                id: created.id,
                email: "ignored@example.org".into(),
                language: "de".into(),
                ..Default::default()
            }),
            update_mask: mask(&["language"]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.email.as_str(), updated.language.as_str()),
        ("ada@example.org", "de")
    );
    // Without a mask: the fields the request sets.
    let updated = customers
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                id: created.id,
                email: "lovelace@example.org".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.email.as_str(), updated.language.as_str()),
        ("lovelace@example.org", "de")
    );
    // `*`: both, so empty values clear the email and reset the language.
    let updated = customers
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                id: created.id,
                ..Default::default()
            }),
            update_mask: mask(&["*"]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.email.as_str(), updated.language.as_str()),
        ("", "en")
    );
    let read = app.get_customer(created.id).await;
    assert_eq!(read, updated);
    // Mistakes name their field and change nothing.
    let cases = [
        (mask(&["email"]), "not-an-address", "", "customer.email"),
        (mask(&["language"]), "", "fr", "customer.language"),
        (mask(&["name"]), "", "", "update_mask"),
        (mask(&["phone_number"]), "", "", "update_mask"),
    ];
    for (update_mask, email, language, field) in cases {
        let result = customers
            .update_customer(pb::UpdateCustomerRequest {
                customer: Some(pb::Customer {
                    id: created.id,
                    email: email.into(),
                    language: language.into(),
                    ..Default::default()
                }),
                update_mask,
            })
            .await;
        assert_status(result, Code::InvalidArgument, field);
    }
    assert_eq!(app.get_customer(created.id).await, updated);
    let missing = customers
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                id: 999,
                language: "de".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await;
    assert_status(missing, Code::NotFound, "customer 999");
    let bad = customers
        .create_customer(pb::CreateCustomerRequest {
            name: "Bad".into(),
            phone_number: "+14155550101".into(),
            plan_id: plan.id,
            language: "xx".into(),
            ..Default::default()
        })
        .await;
    assert_status(bad, Code::InvalidArgument, "language");
}

#[tokio::test]
async fn an_operators_issuer_details_are_updated_by_mask() {
    let app = spawn_app().await;
    let operator = app.operator("North Telecom").await;
    assert_eq!(operator.legal_name, "");
    let mut customers = app.customers.clone();
    let updated = customers
        .update_operator(pb::UpdateOperatorRequest {
            operator: Some(pb::Operator {
                id: operator.id,
                legal_name: "North Telecom GmbH".into(),
                address: "Hauptstraße 1\r\n10115 Berlin\n".into(),
                tax_id: "DE123456789".into(),
                support_email: "billing@north.example".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.address, "Hauptstraße 1\n10115 Berlin");
    assert_eq!(updated.legal_name, "North Telecom GmbH");
    let updated = customers
        .update_operator(pb::UpdateOperatorRequest {
            operator: Some(pb::Operator {
                id: operator.id,
                tax_id: "DE987654321".into(),
                legal_name: "ignored".into(),
                ..Default::default()
            }),
            update_mask: mask(&["tax_id"]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.legal_name.as_str(), updated.tax_id.as_str()),
        ("North Telecom GmbH", "DE987654321")
    );
    let listed = customers
        .list_operators(pb::ListOperatorsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .operators;
    assert_eq!(listed, vec![updated.clone()]);
    for (operator, update_mask, field) in [
        (
            pb::Operator {
                id: operator.id,
                support_email: "billing at north".into(),
                ..Default::default()
            },
            mask(&["support_email"]),
            "operator.support_email",
        ),
        (
            pb::Operator {
                id: operator.id,
                address: "a\tb".into(),
                ..Default::default()
            },
            mask(&["address"]),
            "operator.address",
        ),
        (
            pb::Operator {
                id: operator.id,
                name: "Renamed".into(),
                ..Default::default()
            },
            mask(&["name"]),
            "update_mask",
        ),
    ] {
        let result = customers
            .update_operator(pb::UpdateOperatorRequest {
                operator: Some(operator),
                update_mask,
            })
            .await;
        assert_status(result, Code::InvalidArgument, field);
    }
    let missing = customers
        .update_operator(pb::UpdateOperatorRequest {
            operator: Some(pb::Operator {
                id: 999,
                tax_id: "X".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await;
    assert_status(missing, Code::NotFound, "operator 999");
}
