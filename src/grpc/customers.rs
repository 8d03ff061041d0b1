//! `billing.v1.CustomerService`: plans, operators, customers, top-ups.

use tonic::{Request, Response, Status};

use super::IdPage;
use super::auth::caller_may;
use super::convert;
use super::pb::{self, customer_service_server::CustomerService};
use crate::domain::access::Action;
use crate::domain::model::{NewCustomer, TopUpRequest};
use crate::domain::plan::NewPlan;
use crate::domain::validation as valid;
use crate::service::Customers;

/// The CustomerService implementation.
#[derive(Debug, Clone)]
pub struct CustomerApi {
    customers: Customers,
}

impl CustomerApi {
    pub fn new(customers: Customers) -> Self {
        CustomerApi { customers }
    }
}

#[tonic::async_trait]
impl CustomerService for CustomerApi {
    async fn create_plan(
        &self,
        request: Request<pb::CreatePlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let principal = caller_may(&request, Action::CreatePlan)?;
        let new = NewPlan::try_from(request.into_inner())?;
        let plan = self.customers.create_plan(&principal, new).await?;
        Ok(Response::new(plan.into()))
    }

    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let principal = caller_may(&request, Action::ListPlans)?;
        let pb::ListPlansRequest {
            page_size,
            page_token,
        } = request.into_inner();
        let page = IdPage::of("plans", Vec::new(), page_size, &page_token)?;
        let plans = self
            .customers
            .list_plans(&principal, page.after_id, page.fetch())
            .await?;
        let (plans, next_page_token) = page.finish(plans, |plan| plan.id);
        Ok(Response::new(pb::ListPlansResponse {
            plans: plans.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn create_operator(
        &self,
        request: Request<pb::CreateOperatorRequest>,
    ) -> Result<Response<pb::Operator>, Status> {
        let principal = caller_may(&request, Action::CreateOperator)?;
        let pb::CreateOperatorRequest { name } = request.into_inner();
        let name = valid::name("name", &name)?;
        let operator = self.customers.create_operator(&principal, name).await?;
        Ok(Response::new(operator.into()))
    }

    async fn list_operators(
        &self,
        request: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        let principal = caller_may(&request, Action::ListOperators)?;
        let pb::ListOperatorsRequest {
            page_size,
            page_token,
        } = request.into_inner();
        let page = IdPage::of("operators", Vec::new(), page_size, &page_token)?;
        let operators = self
            .customers
            .list_operators(&principal, page.after_id, page.fetch())
            .await?;
        let (operators, next_page_token) = page.finish(operators, |operator| operator.id);
        Ok(Response::new(pb::ListOperatorsResponse {
            operators: operators.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let principal = caller_may(&request, Action::CreateCustomer)?;
        let new = NewCustomer::try_from(request.into_inner())?;
        let customer = self.customers.create_customer(&principal, new).await?;
        Ok(Response::new(customer.into()))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let principal = caller_may(&request, Action::GetCustomer)?;
        let pb::GetCustomerRequest { customer_id } = request.into_inner();
        let customer = self
            .customers
            .customer(&principal, valid::id("customer_id", customer_id)?)
            .await?;
        Ok(Response::new(customer.into()))
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let principal = caller_may(&request, Action::ListCustomers)?;
        let pb::ListCustomersRequest {
            operator_id,
            page_size,
            page_token,
        } = request.into_inner();
        let operator_id = valid::optional_id("operator_id", operator_id)?;
        let page = IdPage::of(
            "customers",
            vec![operator_id.unwrap_or(0)],
            page_size,
            &page_token,
        )?;
        let customers = self
            .customers
            .list_customers(&principal, operator_id, page.after_id, page.fetch())
            .await?;
        let (customers, next_page_token) = page.finish(customers, |customer| customer.id);
        Ok(Response::new(pb::ListCustomersResponse {
            customers: customers.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn link_operator(
        &self,
        request: Request<pb::LinkOperatorRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let principal = caller_may(&request, Action::LinkOperator)?;
        let pb::LinkOperatorRequest {
            customer_id,
            operator_id,
        } = request.into_inner();
        let customer = self
            .customers
            .link_operator(
                &principal,
                valid::id("customer_id", customer_id)?,
                valid::id("operator_id", operator_id)?,
            )
            .await?;
        Ok(Response::new(customer.into()))
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let principal = caller_may(&request, Action::UpdateCustomer)?;
        let (customer_id, update) = super::convert::contact_update(request.into_inner())?;
        let customer = self
            .customers
            .update_customer(&principal, customer_id, update)
            .await?;
        Ok(Response::new(customer.into()))
    }

    async fn update_operator(
        &self,
        request: Request<pb::UpdateOperatorRequest>,
    ) -> Result<Response<pb::Operator>, Status> {
        let principal = caller_may(&request, Action::UpdateOperator)?;
        let (operator_id, update) = super::convert::issuer_update(request.into_inner())?;
        let operator = self
            .customers
            .update_operator(&principal, operator_id, update)
            .await?;
        Ok(Response::new(operator.into()))
    }

    async fn top_up(
        &self,
        request: Request<pb::TopUpRequest>,
    ) -> Result<Response<pb::TopUpResponse>, Status> {
        let principal = caller_may(&request, Action::TopUp)?;
        let top_up = TopUpRequest::try_from(request.into_inner())?;
        let outcome = self.customers.top_up(&principal, top_up).await?;
        Ok(Response::new(pb::TopUpResponse {
            balance_micros: outcome.balance_micros,
            duplicate: outcome.duplicate,
        }))
    }

    async fn assign_number(
        &self,
        request: Request<pb::AssignNumberRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let principal = caller_may(&request, Action::ManageNumbers)?;
        let pb::AssignNumberRequest {
            customer_id,
            number,
            valid_from,
        } = request.into_inner();
        let customer_id = valid::id("customer_id", customer_id)?;
        let number = valid::phone_number("number", &number)?;
        let valid_from = convert::instant("valid_from", valid_from.as_ref())?;
        let customer = self
            .customers
            .assign_number(&principal, customer_id, number, valid_from)
            .await?;
        Ok(Response::new(customer.into()))
    }

    async fn release_number(
        &self,
        request: Request<pb::ReleaseNumberRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let principal = caller_may(&request, Action::ManageNumbers)?;
        let pb::ReleaseNumberRequest {
            number,
            valid_until,
        } = request.into_inner();
        let number = valid::phone_number("number", &number)?;
        let valid_until = convert::instant("valid_until", valid_until.as_ref())?;
        let customer = self
            .customers
            .release_number(&principal, number, valid_until)
            .await?;
        Ok(Response::new(customer.into()))
    }
}
