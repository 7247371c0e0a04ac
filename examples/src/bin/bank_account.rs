//! Bank account: an event-sourced aggregate, end to end.
//!
//! Run: `scripts/quickstart.sh bank_account` (starts a nats-server on a free port and runs this
//! program against it), or with a server of your own (2.11 or newer):
//! `EVENTBUS_URL=nats://127.0.0.1:4222 cargo run -p eventbus-examples --bin bank_account`.
//!
//! An account's state is never stored, only its events: `load` folds them into an `Account`
//! and tells its version; a command decides on that state (a withdrawal may not overdraw) and
//! `save` appends the new events only if the account is still at that version. When two tellers
//! act on the same account at once, one of them gets a conflict, reloads and decides again.

use eventbus::prelude::*;
use eventbus::{Error, ErrorKind, Loaded};
use schemars::JsonSchema;

#[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone)]
#[event(aggregate = "account", name = "opened")]
struct AccountOpened {
    #[event(aggregate_id)]
    account: String,
    owner: String,
}

#[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone)]
#[event(aggregate = "account", name = "deposited")]
struct MoneyDeposited {
    #[event(aggregate_id)]
    account: String,
    cents: u64,
}

#[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone)]
#[event(aggregate = "account", name = "withdrawn")]
struct MoneyWithdrawn {
    #[event(aggregate_id)]
    account: String,
    cents: u64,
}

/// Every event of an account, for `load` and `save`.
#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "account")]
enum AccountEvent {
    Opened(AccountOpened),
    Deposited(MoneyDeposited),
    Withdrawn(MoneyWithdrawn),
}

/// The state, rebuilt from the events.
#[derive(Debug, Default)]
struct Account {
    owner: Option<String>,
    balance_cents: u64,
}

impl Aggregate for Account {
    type Event = AccountEvent;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened(e) => self.owner = Some(e.owner.clone()),
            AccountEvent::Deposited(e) => self.balance_cents += e.cents,
            AccountEvent::Withdrawn(e) => self.balance_cents -= e.cents,
        }
    }
}

/// What a teller asks for.
#[derive(Debug, Clone, Copy)]
enum Command<'a> {
    Open { owner: &'a str },
    Deposit { cents: u64 },
    Withdraw { cents: u64 },
}

/// The business rules: the events a command makes on the current state, or why it is refused.
fn decide(id: &str, state: &Account, command: Command<'_>) -> Result<Vec<AccountEvent>, String> {
    let account = id.to_owned();
    match (command, &state.owner) {
        (Command::Open { owner }, None) => Ok(vec![AccountEvent::Opened(AccountOpened {
            account,
            owner: owner.to_owned(),
        })]),
        (Command::Open { .. }, Some(_)) => Err("the account is open already".into()),
        (_, None) => Err("the account is not open".into()),
        (Command::Deposit { cents }, Some(_)) => {
            Ok(vec![AccountEvent::Deposited(MoneyDeposited {
                account,
                cents,
            })])
        }
        (Command::Withdraw { cents }, Some(_)) if cents > state.balance_cents => Err(format!(
            "cannot withdraw {} from a balance of {}",
            money(cents),
            money(state.balance_cents)
        )),
        (Command::Withdraw { cents }, Some(_)) => {
            Ok(vec![AccountEvent::Withdrawn(MoneyWithdrawn {
                account,
                cents,
            })])
        }
    }
}

/// Loads the account, decides, saves at the loaded version; on a conflict (someone saved in
/// between) loads again and decides again. `Ok(Err(reason))`: the command was refused.
async fn execute(bus: &Bus, id: &str, command: Command<'_>) -> Result<Result<u64, String>, Error> {
    loop {
        let Loaded { state, version } = bus.load::<Account>(id).await?;
        let events = match decide(id, &state, command) {
            Ok(events) => events,
            Err(reason) => return Ok(Err(reason)),
        };
        match bus.save(id, version, &events).await {
            Ok(saved) => return Ok(Ok(saved.version)),
            Err(e) if e.kind() == ErrorKind::Conflict => {
                println!("  conflict ({e}); reloading");
            }
            Err(e) => return Err(e),
        }
    }
}

const fn dollars(n: u64) -> u64 {
    n * 100
}

fn money(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,eventbus=info".into()),
        )
        .init();
    // `publishes`: the events it appends, the `send` operations of its AsyncAPI document
    // (`EVENTBUS_PRINT_ASYNCAPI=1` prints it, README "Contracts").
    let bus = eventbus::builder()
        .service("bank")
        .publishes::<AccountEvent>()
        .start()
        .await?;
    // A new account each run, so the program can run again against the same server.
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let id = format!("acct-{}", since_epoch.as_micros());

    for command in [
        Command::Open { owner: "Ada" },
        Command::Deposit {
            cents: dollars(100),
        },
        Command::Withdraw { cents: dollars(30) },
        Command::Withdraw {
            cents: dollars(500),
        },
    ] {
        match execute(&bus, &id, command).await? {
            Ok(version) => println!("{command:?}: done, account {id} at version {version}"),
            Err(reason) => println!("{command:?}: refused: {reason}"),
        }
    }

    // Two tellers load the account at the same version; the first to save wins.
    let first = bus.load::<Account>(&id).await?;
    let second = bus.load::<Account>(&id).await?;
    println!(
        "two tellers see {} at version {}",
        money(first.state.balance_cents),
        first.version
    );
    let take = |cents| decide(&id, &first.state, Command::Withdraw { cents });
    let saved = bus
        .save(
            &id,
            first.version,
            &take(dollars(50)).expect("enough money"),
        )
        .await?;
    println!(
        "teller 1 withdrew {}: version {}",
        money(dollars(50)),
        saved.version
    );
    let events =
        decide(&id, &second.state, Command::Withdraw { cents: dollars(40) }).expect("enough");
    match bus.save(&id, second.version, &events).await {
        Err(e) if e.kind() == ErrorKind::Conflict => {
            let c = e.conflict().expect("conflict details");
            println!(
                "teller 2 is refused: expected version {}, the account is at {}",
                c.expected, c.actual
            );
            // Decide again on the new state: the balance may no longer allow it.
            match execute(&bus, &id, Command::Withdraw { cents: dollars(40) }).await? {
                Ok(version) => println!(
                    "teller 2 withdrew {} at version {version}",
                    money(dollars(40))
                ),
                Err(reason) => println!("teller 2, after reloading: refused: {reason}"),
            }
        }
        Err(e) => return Err(e),
        Ok(_) => unreachable!("teller 1 saved first"),
    }

    let Loaded { state, version } = bus.load::<Account>(&id).await?;
    println!(
        "account {id} of {}: balance {} at version {version}; its history:",
        state.owner.as_deref().unwrap_or("?"),
        money(state.balance_cents)
    );
    for recorded in bus.read::<AccountEvent>(&id).collect().await? {
        println!(
            "  v{} (#{}) {:?}",
            recorded.version, recorded.sequence, recorded.event
        );
    }
    bus.shutdown().await?;
    Ok(())
}
