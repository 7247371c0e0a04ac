use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "clock", name = "ticked")]
pub struct Ticked;

fn main() {}
