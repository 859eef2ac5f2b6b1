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
    let path = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    )
    .join("tests/golden")
    .join(name);
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

#[derive(Deserialize)]
struct MinimumCase {
    name: String,
    usage: Decimal,
    minimum: Decimal,
    true_up: Decimal,
}

#[test]
fn a_minimum_spend_shortfall_becomes_a_true_up() {
    for c in load::<MinimumCase>("minimums.toml") {
        assert_eq!(meterflow_rater::minimum_true_up(c.usage, c.minimum), c.true_up, "{}", c.name);
    }
}

#[test]
fn a_mid_period_plan_change_prices_each_part_by_its_own_version() {
    use meterflow_rater::{pricing_at, PlanConfig, PriceBook, Subscription};
    #[derive(Deserialize)]
    struct Plans {
        plans: Vec<PlanConfig>,
    }
    // Version 1 until 15 November: graduated 0..100 @ 1.00, then 0.50. Version 2: 0.80 flat.
    let text = r#"
[[plans]]
id = "p"
currency = "USD"
[[plans.versions]]
effective_from = "2026-01-01"
charges = [{ meter = "m", model = "graduated", tiers = [{ up_to = "100", unit_price = "1.00" }, { unit_price = "0.50" }] }]
[[plans.versions]]
effective_from = "2026-11-15"
charges = [{ meter = "m", model = "per_unit", unit_price = "0.80" }]
"#;
    let book = PriceBook::new(toml::from_str::<Plans>(text).unwrap().plans, &["m"]).unwrap();
    let subs = [Subscription { plan: "p".into(), start: None, end: None }];
    let at = |t: &str| pricing_at(&book, &subs, meterflow_rater::parse_instant(t).unwrap()).unwrap();
    let (plan, early) = at("2026-11-10T08:00:00Z");
    let (_, late) = at("2026-11-20T08:00:00Z");
    assert_eq!((plan.version_label(early), plan.version_label(late)), ("p@2026-01-01".into(), "p@2026-11-15".into()));
    // 150 units before the change, 150 after: tiers restart with the new version.
    // before: 100 x 1.00 + 50 x 0.50 = 125.00; after: 150 x 0.80 = 120.00; period = 245.00
    let price = |v: usize, q: &str| plan.versions[v].charge("m").unwrap().price(q.parse().unwrap()).unwrap();
    assert_eq!(price(early, "150") + price(late, "150"), "245.00".parse::<Decimal>().unwrap());
    // A subscription that has not started yet prices nothing.
    let later = [Subscription { plan: "p".into(), start: meterflow_rater::parse_instant("2026-12-01"), end: None }];
    assert!(pricing_at(&book, &later, meterflow_rater::parse_instant("2026-11-30").unwrap()).is_none());
}
