//! Small builders for the nftables JSON expressions and statements our rules are made of.
//!
//! Each builder produces exactly the form `nft -j list` prints back (nft 1.0.x), so a listed
//! rule can be compared with a rendered one (see [`crate::observe`]).

use std::borrow::Cow;
use std::collections::HashSet;

use nftables::expr::{
    BinaryOperation, CT, Expression, Fib, FibFlag, FibResult, Map, Meta, MetaKey, NamedExpression,
    Payload, PayloadField, Prefix,
};
use nftables::stmt::{Match, NAT, NATFamily, Operator, Statement};

/// A string immediate: `"tcp"`, `"ve-web"`, `"10.0.0.2"`.
pub(crate) fn string(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

/// A number immediate (ports).
pub(crate) fn number(n: u16) -> Expression<'static> {
    Expression::Number(u32::from(n))
}

/// A reference to a named set or map of our table: `@name`.
pub(crate) fn set_ref(name: &str) -> Expression<'static> {
    string(format!("@{name}"))
}

/// `meta <key>`, e.g. `meta l4proto`, `iifname`.
pub(crate) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

/// A header field: `ip saddr`, `ip6 daddr`, `th dport`, `udp dport`.
pub(crate) fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

/// A concatenation: `a . b . c`.
pub(crate) fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

/// `left & mask`: `ip saddr & 255.255.255.240`.
pub(crate) fn and(left: Expression<'static>, mask: &'static str) -> Expression<'static> {
    Expression::BinaryOperation(Box::new(BinaryOperation::AND(left, string(mask))))
}

/// An address prefix: `127.0.0.0/8`.
pub(crate) fn prefix(addr: impl Into<String>, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(string(addr)),
        len: u32::from(len),
    }))
}

/// `ct <key>`, e.g. `ct state`, `ct status`.
pub(crate) fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

/// `fib daddr type`: the address type of the destination (`local` for the host's addresses).
pub(crate) fn fib_daddr_type() -> Expression<'static> {
    Expression::Named(NamedExpression::Fib(Fib {
        result: FibResult::Type,
        flags: HashSet::from([FibFlag::Daddr]),
    }))
}

/// `fib saddr . iif oif`: the interface a reply to the source would leave through, if that is
/// the packet's input interface (`missing`, i.e. false, otherwise): a reverse-path check.
pub(crate) fn fib_saddr_iif_oif() -> Expression<'static> {
    Expression::Named(NamedExpression::Fib(Fib {
        result: FibResult::Oif,
        flags: HashSet::from([FibFlag::Saddr, FibFlag::Iif]),
    }))
}

/// `missing` (a `fib` result that does not exist).
pub(crate) fn missing() -> Expression<'static> {
    Expression::Boolean(false)
}

fn matches(
    op: Operator,
    left: Expression<'static>,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

/// `left right` (equality, or membership when `right` is `@set`).
pub(crate) fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(Operator::EQ, left, right)
}

/// `left != right` (inequality, or non-membership when `right` is `@set`).
pub(crate) fn ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(Operator::NEQ, left, right)
}

/// `left flag[,flag]` on a bit field (`ct state established,related`, `ct status dnat`).
pub(crate) fn has_flags(left: Expression<'static>, flags: &[&'static str]) -> Statement<'static> {
    let right = match flags {
        [one] => string(*one),
        many => Expression::List(many.iter().map(|f| string(*f)).collect()),
    };
    matches(Operator::IN, left, right)
}

/// `dnat ip[6] to KEY map @ADDR_MAP : KEY map @PORT_MAP`: address and port looked up with the
/// same key in two maps.
pub(crate) fn dnat_maps(
    ipv4: bool,
    key: Expression<'static>,
    addr_map: &str,
    port_map: &str,
) -> Statement<'static> {
    let lookup = |key, map| {
        Expression::Named(NamedExpression::Map(Box::new(Map {
            key,
            data: set_ref(map),
        })))
    };
    Statement::DNAT(Some(NAT {
        addr: Some(lookup(key.clone(), addr_map)),
        family: Some(if ipv4 { NATFamily::IP } else { NATFamily::IP6 }),
        port: Some(lookup(key, port_map)),
        flags: None,
    }))
}

/// `masquerade`
pub(crate) fn masquerade() -> Statement<'static> {
    Statement::Masquerade(None)
}

/// `accept`
pub(crate) fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

/// `drop`
pub(crate) fn drop() -> Statement<'static> {
    Statement::Drop(None)
}
