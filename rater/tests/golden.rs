//! Golden cases for every charge model, proration and rounding, kept in readable TOML files
//! under `tests/golden/` with a note per case on how the number was derived.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly by design

use meterflow_rater::{parse_instant, prorate, round_money, Charge, Currency, Period, Rounding};
use rust_decimal::Decimal;
use serde::Deserialize;

fn load<T: for<'de> Deserialize<'de>>(name: &str) -> Vec<T> {
    #[derive(Deserialize)]
    struct File<T> {
        case: Vec<T>,
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    toml::from_str::<File<T>>(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())).case
}

#[derive(Deserialize)]
struct ChargeCase {
    name: String,
    charge: Charge,
    quantity: Decimal,
    amount: Decimal,
}

#[test]
fn every_charge_model_prices_the_hand_computed_examples() {
    let cases: Vec<ChargeCase> = load("charges.toml");
    assert!(cases.len() >= 15);
    for c in cases {
        c.charge.validate("golden").unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(c.charge.price(c.quantity).unwrap(), c.amount, "{}", c.name);
    }
}

#[derive(Deserialize)]
struct ProrationCase {
    name: String,
    fee: Decimal,
    period: String,
    from: String,
    #[serde(default)]
    to: Option<String>,
    amount: Decimal,
}

#[test]
fn recurring_fees_are_prorated_by_active_days() {
    for c in load::<ProrationCase>("proration.toml") {
        let period = Period::parse(&c.period).unwrap();
        let from = parse_instant(&c.from).unwrap();
        let to = c.to.as_deref().map(|t| parse_instant(t).unwrap());
        assert_eq!(prorate(c.fee, &period, from, to), c.amount, "{}", c.name);
    }
}

#[derive(Deserialize)]
struct RoundingCase {
    name: String,
    amount: Decimal,
    currency: String,
    rounding: Rounding,
    rounded: Decimal,
}

#[test]
fn invoice_lines_round_once_to_the_currency_minor_unit() {
    for c in load::<RoundingCase>("rounding.toml") {
        let currency = Currency::parse(&c.currency).unwrap();
        let got = round_money(c.amount, &currency, c.rounding);
        assert_eq!(got, c.rounded, "{}", c.name);
        assert_eq!(got.scale(), currency.minor_units, "{}: scale", c.name);
    }
}
