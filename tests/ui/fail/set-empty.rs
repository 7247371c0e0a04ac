use eventbus::prelude::*;

#[derive(DomainEvent)]
#[event(aggregate = "order")]
pub enum OrderEvent {}

fn main() {}
