//! Who is asking and what they may do: accounts, roles, the caller's
//! [`Principal`] and the one access policy of the service, as pure
//! functions. The use-case layer (`service`) applies it; nothing else
//! decides access.
//!
//! The policy answers in two steps. [`permits`] says whether a role may
//! perform an action at all (no: `PERMISSION_DENIED`). [`customer_scope`]
//! says which customers the caller may see; a customer outside it is
//! `NOT_FOUND`, so an operator never learns that another operator's customer
//! exists.

use chrono::{DateTime, Utc};

use super::credentials;
use crate::error::{AppError, AppResult};

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Operator,
    Customer,
    Switch,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Customer => "customer",
            Role::Switch => "switch",
        }
    }

    /// The role of a stored name.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "customer" => Some(Role::Customer),
            "switch" => Some(Role::Switch),
            _ => None,
        }
    }
}

/// A stored account (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: i64,
    pub username: String,
    pub role: Role,
    /// The operator of an operator or switch account.
    pub operator_id: Option<i64>,
    /// The customer of a customer account.
    pub customer_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    /// When it was disabled: its credentials are refused from then on.
    pub disabled_at: Option<DateTime<Utc>>,
}

/// An API key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub id: i64,
    pub name: String,
    pub account_id: i64,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A validated request to create an account.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub username: String,
    pub password: String,
    pub role: Role,
    pub operator_id: Option<i64>,
    pub customer_id: Option<i64>,
}

impl NewAccount {
    /// Validates a request to create an account. The role's id is required
    /// (`operator_id` for operator and switch accounts, `customer_id` for
    /// customer accounts) and the other id must be 0.
    pub fn new(
        username: String,
        password: String,
        role: Option<Role>,
        operator_id: i64,
        customer_id: i64,
    ) -> AppResult<NewAccount> {
        let username = credentials::valid_username(username)?;
        credentials::valid_new_password(&password)?;
        let role = role.ok_or_else(|| AppError::invalid("role", "is required"))?;
        let id = |field: &str, value: i64, wanted: bool| -> AppResult<Option<i64>> {
            match (value, wanted) {
                (0, false) => Ok(None),
                (0, true) => Err(AppError::invalid(
                    field,
                    format!("is required for a {} account", role.as_str()),
                )),
                (value, true) if value > 0 => Ok(Some(value)),
                (value, true) => Err(AppError::invalid(
                    field,
                    format!("must be positive, got {value}"),
                )),
                (_, false) => Err(AppError::invalid(
                    field,
                    format!("must be 0 for a {} account", role.as_str()),
                )),
            }
        };
        let needs_operator = matches!(role, Role::Operator | Role::Switch);
        Ok(NewAccount {
            username,
            password,
            role,
            operator_id: id("operator_id", operator_id, needs_operator)?,
            customer_id: id("customer_id", customer_id, role == Role::Customer)?,
        })
    }
}

/// The caller of a request, established by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An administrator: everything.
    Admin { account_id: i64 },
    /// An operator's staff: the customers linked to the operator.
    Operator { account_id: i64, operator_id: i64 },
    /// A switch of an operator: pushes calls of the operator's customers.
    Switch { account_id: i64, operator_id: i64 },
    /// A customer: its own data.
    Customer { account_id: i64, customer_id: i64 },
    /// The service itself, with everything an admin may do: the scheduler,
    /// demo data, or a server run with authentication off. The reason is
    /// mandatory so every such path says why it needs full access.
    System(&'static str),
}

impl Principal {
    /// The principal an account acts as. An account whose role lacks the id
    /// it needs cannot act at all (the database never holds one).
    pub fn of(account: &Account) -> AppResult<Principal> {
        let missing = || AppError::internal(format!("account {} lacks its role's id", account.id));
        let account_id = account.id;
        Ok(match account.role {
            Role::Admin => Principal::Admin { account_id },
            Role::Operator => Principal::Operator {
                account_id,
                operator_id: account.operator_id.ok_or_else(missing)?,
            },
            Role::Switch => Principal::Switch {
                account_id,
                operator_id: account.operator_id.ok_or_else(missing)?,
            },
            Role::Customer => Principal::Customer {
                account_id,
                customer_id: account.customer_id.ok_or_else(missing)?,
            },
        })
    }

    /// The signed-in account, if the caller is one.
    pub fn account_id(&self) -> Option<i64> {
        match self {
            Principal::Admin { account_id }
            | Principal::Operator { account_id, .. }
            | Principal::Switch { account_id, .. }
            | Principal::Customer { account_id, .. } => Some(*account_id),
            Principal::System(_) => None,
        }
    }
}

/// Every operation the policy rules on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CreateAccount,
    ManageAccounts,
    ManageApiKeys,
    WhoAmI,
    Logout,
    CreatePlan,
    ListPlans,
    CreateOperator,
    ListOperators,
    CreateCustomer,
    GetCustomer,
    ListCustomers,
    LinkOperator,
    UpdateCustomer,
    UpdateOperator,
    TopUp,
    ManageNumbers,
    AddCalls,
    AuthorizeCall,
    GetCallHistory,
    ListCalls,
    GenerateInvoice,
    ReadInvoices,
    StreamConsolidated,
    RunBillingCycle,
    WatchInvoices,
    ManageWebhooks,
    ReadDeliveries,
}

/// Whether `principal` may perform `action` at all; `PERMISSION_DENIED`
/// if not. Which customers it may perform it on is [`customer_scope`].
pub fn permits(principal: &Principal, action: Action) -> AppResult<()> {
    use Action::*;
    let allowed = match principal {
        Principal::Admin { .. } | Principal::System(_) => true,
        Principal::Operator { .. } => matches!(
            action,
            CreateAccount
                | ManageAccounts
                | ManageApiKeys
                | WhoAmI
                | Logout
                | ListPlans
                | CreateCustomer
                | GetCustomer
                | ListCustomers
                | UpdateCustomer
                | UpdateOperator
                | TopUp
                | ManageNumbers
                | AddCalls
                | AuthorizeCall
                | GetCallHistory
                | ListCalls
                | GenerateInvoice
                | ReadInvoices
                | StreamConsolidated
                | WatchInvoices
                | ManageWebhooks
                | ReadDeliveries
        ),
        Principal::Switch { .. } => {
            matches!(action, AddCalls | AuthorizeCall | WhoAmI | Logout)
        }
        Principal::Customer { .. } => matches!(
            action,
            GetCustomer
                | GetCallHistory
                | GenerateInvoice
                | ReadInvoices
                | StreamConsolidated
                | WatchInvoices
                | WhoAmI
                | Logout
        ),
    };
    if allowed {
        Ok(())
    } else {
        Err(AppError::PermissionDenied(format!(
            "{} may not {}",
            role_name(principal),
            action_name(action)
        )))
    }
}

/// The customers a principal may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerScope {
    /// Every customer.
    All,
    /// The customers linked to this operator.
    Operator(i64),
    /// This one customer.
    Customer(i64),
}

/// The customers `principal` may see.
pub fn customer_scope(principal: &Principal) -> CustomerScope {
    match principal {
        Principal::Admin { .. } | Principal::System(_) => CustomerScope::All,
        Principal::Operator { operator_id, .. } | Principal::Switch { operator_id, .. } => {
            CustomerScope::Operator(*operator_id)
        }
        Principal::Customer { customer_id, .. } => CustomerScope::Customer(*customer_id),
    }
}

/// The scope of a listing filtered by `operator_id` (`None`: no filter). An
/// admin lists what it asks for; an operator lists its own customers, and
/// asking for another operator's is `PERMISSION_DENIED`.
pub fn operator_listing(
    principal: &Principal,
    operator_id: Option<i64>,
) -> AppResult<CustomerScope> {
    match (customer_scope(principal), operator_id) {
        (CustomerScope::All, Some(id)) => Ok(CustomerScope::Operator(id)),
        (CustomerScope::All, None) => Ok(CustomerScope::All),
        (CustomerScope::Operator(own), None) => Ok(CustomerScope::Operator(own)),
        (CustomerScope::Operator(own), Some(id)) if id == own => Ok(CustomerScope::Operator(own)),
        (CustomerScope::Operator(_), Some(_)) => Err(AppError::PermissionDenied(
            "operator_id: an operator lists only its own customers".to_owned(),
        )),
        (CustomerScope::Customer(own), _) => Ok(CustomerScope::Customer(own)),
    }
}

/// Whether `principal` may create an account with `role` for the operator
/// or customer named, given whether that customer is linked to the
/// principal's operator: admins create any account; an operator creates
/// customer accounts for its own customers and switch accounts for itself.
pub fn may_create_account(
    principal: &Principal,
    new: &NewAccount,
    customer_linked: bool,
) -> AppResult<()> {
    permits(principal, Action::CreateAccount)?;
    let allowed = match principal {
        Principal::Admin { .. } | Principal::System(_) => true,
        Principal::Operator { operator_id, .. } => {
            operator_manages(*operator_id, new.role, new.operator_id, customer_linked)
        }
        Principal::Switch { .. } | Principal::Customer { .. } => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(AppError::PermissionDenied(
            "an operator creates only customer accounts for its own customers and switch \
             accounts for itself"
                .to_owned(),
        ))
    }
}

/// Whether operator `operator_id` manages (creates, disables) an account of
/// `role` that belongs to `account_operator`, or to a customer linked to it
/// or not: customer accounts of its customers and switch accounts of its
/// own, nothing else.
fn operator_manages(
    operator_id: i64,
    role: Role,
    account_operator: Option<i64>,
    customer_linked: bool,
) -> bool {
    match role {
        Role::Customer => customer_linked,
        Role::Switch => account_operator == Some(operator_id),
        Role::Admin | Role::Operator => false,
    }
}

/// Whether `principal` may create or revoke API keys of `owner`: admins
/// any account's; an operator those of its own operator's accounts.
pub fn may_manage_keys_of(principal: &Principal, owner: Option<&Account>) -> AppResult<()> {
    permits(principal, Action::ManageApiKeys)?;
    let allowed = match (principal, owner) {
        (Principal::Admin { .. } | Principal::System(_), _) => true,
        (Principal::Operator { operator_id, .. }, Some(owner)) => {
            matches!(owner.role, Role::Operator | Role::Switch)
                && owner.operator_id == Some(*operator_id)
        }
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(AppError::PermissionDenied(
            "an operator manages API keys only of its own operator's accounts".to_owned(),
        ))
    }
}

/// Whether `principal` may update operator `operator_id`'s issuer details:
/// an admin any operator's, an operator its own.
pub fn may_update_operator(principal: &Principal, operator_id: i64) -> AppResult<()> {
    permits(principal, Action::UpdateOperator)?;
    match principal {
        Principal::Operator {
            operator_id: own, ..
        } if *own != operator_id => Err(AppError::PermissionDenied(
            "an operator updates only its own issuer details".to_owned(),
        )),
        _ => Ok(()),
    }
}

/// Whether `principal` may manage the webhooks of operator `operator_id`:
/// an admin any operator's, an operator its own.
pub fn may_manage_webhooks_of(principal: &Principal, operator_id: i64) -> AppResult<()> {
    permits(principal, Action::ManageWebhooks)?;
    match principal {
        Principal::Operator {
            operator_id: own, ..
        } if *own != operator_id => Err(AppError::PermissionDenied(
            "an operator manages only its own webhooks".to_owned(),
        )),
        _ => Ok(()),
    }
}

/// The accounts a principal may list and manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountScope {
    /// Every account.
    All,
    /// The operator's own accounts (operator and switch) and the accounts
    /// of the customers linked to it.
    Operator(i64),
}

/// The accounts `principal` may list; `PERMISSION_DENIED` for roles that
/// manage none.
pub fn account_scope(principal: &Principal) -> AppResult<AccountScope> {
    permits(principal, Action::ManageAccounts)?;
    match principal {
        Principal::Operator { operator_id, .. } => Ok(AccountScope::Operator(*operator_id)),
        _ => Ok(AccountScope::All),
    }
}

/// Whether `principal` may disable `target`, whose customer (for a
/// customer account) is linked to the principal's operator or not: an
/// admin any account but its own (`FAILED_PRECONDITION`: a service must
/// keep an admin who can sign in); an operator the switch accounts of its
/// operator and the accounts of its customers, as it may create them. An
/// unknown account (`None`) is one no operator may disable.
pub fn may_disable(
    principal: &Principal,
    target: Option<&Account>,
    customer_linked: bool,
) -> AppResult<()> {
    permits(principal, Action::ManageAccounts)?;
    if target.is_some_and(|target| principal.account_id() == Some(target.id)) {
        return Err(AppError::FailedPrecondition(
            "an account cannot disable itself; another admin can".to_owned(),
        ));
    }
    let allowed = match (principal, target) {
        (Principal::Admin { .. } | Principal::System(_), _) => true,
        (Principal::Operator { operator_id, .. }, Some(target)) => operator_manages(
            *operator_id,
            target.role,
            target.operator_id,
            customer_linked,
        ),
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(AppError::PermissionDenied(
            "an operator disables only its own switch accounts and its customers' accounts"
                .to_owned(),
        ))
    }
}

/// The API keys a principal may list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScope {
    /// Every key.
    All,
    /// The keys of one account.
    Account(i64),
    /// The keys of an operator's operator and switch accounts, whose keys
    /// [`may_manage_keys_of`] lets that operator manage.
    OperatorAccounts(i64),
}

/// The keys `principal` may list: those of `owner` when one is named (if
/// it may manage them), else all it may manage.
pub fn key_scope(principal: &Principal, owner: Option<&Account>) -> AppResult<KeyScope> {
    if let Some(owner) = owner {
        may_manage_keys_of(principal, Some(owner))?;
        return Ok(KeyScope::Account(owner.id));
    }
    permits(principal, Action::ManageApiKeys)?;
    match principal {
        Principal::Operator { operator_id, .. } => Ok(KeyScope::OperatorAccounts(*operator_id)),
        _ => Ok(KeyScope::All),
    }
}

fn role_name(principal: &Principal) -> &'static str {
    match principal {
        Principal::Admin { .. } => "an admin",
        Principal::Operator { .. } => "an operator account",
        Principal::Switch { .. } => "a switch account",
        Principal::Customer { .. } => "a customer account",
        Principal::System(_) => "the service",
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::CreateAccount => "create accounts",
        Action::ManageAccounts => "manage accounts",
        Action::ManageApiKeys => "manage API keys",
        Action::WhoAmI => "ask who it is",
        Action::Logout => "log out",
        Action::CreatePlan => "create plans",
        Action::ListPlans => "list plans",
        Action::CreateOperator => "create operators",
        Action::ListOperators => "list operators",
        Action::CreateCustomer => "create customers",
        Action::GetCustomer => "read customers",
        Action::ListCustomers => "list customers",
        Action::LinkOperator => "link operators",
        Action::UpdateCustomer => "update customers",
        Action::UpdateOperator => "update operators",
        Action::TopUp => "top up balances",
        Action::ManageNumbers => "assign or release numbers",
        Action::AddCalls => "add calls",
        Action::AuthorizeCall => "authorize calls",
        Action::GetCallHistory => "read call history",
        Action::ListCalls => "list calls",
        Action::GenerateInvoice => "generate invoices",
        Action::ReadInvoices => "read invoices",
        Action::StreamConsolidated => "stream consolidated months",
        Action::RunBillingCycle => "run billing cycles",
        Action::WatchInvoices => "watch invoices",
        Action::ManageWebhooks => "manage webhooks",
        Action::ReadDeliveries => "read deliveries",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: Principal = Principal::Admin { account_id: 1 };
    const OPERATOR: Principal = Principal::Operator {
        account_id: 2,
        operator_id: 10,
    };
    const SWITCH: Principal = Principal::Switch {
        account_id: 3,
        operator_id: 10,
    };
    const CUSTOMER: Principal = Principal::Customer {
        account_id: 4,
        customer_id: 100,
    };

    #[test]
    fn a_switch_only_adds_calls_and_asks_who_it_is() {
        assert!(permits(&SWITCH, Action::AddCalls).is_ok());
        assert!(permits(&SWITCH, Action::WhoAmI).is_ok());
        for action in [Action::GetCustomer, Action::ListCalls, Action::TopUp] {
            assert!(matches!(
                permits(&SWITCH, action),
                Err(AppError::PermissionDenied(_))
            ));
        }
    }

    #[test]
    fn an_operator_may_not_create_plans_operators_links_or_cycles() {
        for action in [
            Action::CreatePlan,
            Action::CreateOperator,
            Action::LinkOperator,
            Action::RunBillingCycle,
        ] {
            assert!(permits(&OPERATOR, action).is_err(), "{action:?}");
        }
        assert!(permits(&OPERATOR, Action::ListPlans).is_ok());
        assert!(permits(&ADMIN, Action::RunBillingCycle).is_ok());
    }

    #[test]
    fn a_customer_reads_its_own_data_and_nothing_else() {
        assert!(permits(&CUSTOMER, Action::GetCallHistory).is_ok());
        assert!(permits(&CUSTOMER, Action::TopUp).is_err());
        assert!(permits(&CUSTOMER, Action::AddCalls).is_err());
        assert_eq!(customer_scope(&CUSTOMER), CustomerScope::Customer(100));
    }

    #[test]
    fn an_operator_lists_only_its_own_customers() {
        assert_eq!(
            operator_listing(&OPERATOR, None).unwrap(),
            CustomerScope::Operator(10)
        );
        assert_eq!(
            operator_listing(&OPERATOR, Some(10)).unwrap(),
            CustomerScope::Operator(10)
        );
        assert!(matches!(
            operator_listing(&OPERATOR, Some(11)),
            Err(AppError::PermissionDenied(_))
        ));
        assert_eq!(operator_listing(&ADMIN, None).unwrap(), CustomerScope::All);
        assert_eq!(
            operator_listing(&ADMIN, Some(11)).unwrap(),
            CustomerScope::Operator(11)
        );
    }

    #[test]
    fn an_operator_creates_customer_accounts_of_its_customers_and_its_own_switches() {
        let new = |role, operator_id, customer_id| NewAccount {
            username: "u".into(),
            password: "p".repeat(12),
            role,
            operator_id,
            customer_id,
        };
        assert!(may_create_account(&OPERATOR, &new(Role::Customer, None, Some(1)), true).is_ok());
        assert!(may_create_account(&OPERATOR, &new(Role::Customer, None, Some(1)), false).is_err());
        assert!(may_create_account(&OPERATOR, &new(Role::Switch, Some(10), None), false).is_ok());
        assert!(may_create_account(&OPERATOR, &new(Role::Switch, Some(11), None), false).is_err());
        assert!(
            may_create_account(&OPERATOR, &new(Role::Operator, Some(10), None), false).is_err()
        );
        assert!(may_create_account(&OPERATOR, &new(Role::Admin, None, None), false).is_err());
        assert!(
            may_create_account(&CUSTOMER, &new(Role::Customer, None, Some(100)), true).is_err()
        );
        assert!(may_create_account(&ADMIN, &new(Role::Admin, None, None), false).is_ok());
    }
}
