//! The bounds of exact money: how precise a price may be, how large a period total and its
//! price may grow, and the exact product of two decimals.

use rust_decimal::Decimal;

/// The most fractional digits a price may carry.
pub const MAX_PRICE_SCALE: u32 = 9;

/// The largest billing-period total (quantity) meterflow rates: 10^20. The quantity columns
/// (DECIMAL(38, 9)) hold up to 10^29 exactly; the bound keeps sums of totals far from the 28
/// significant digits of exact decimals. Usage that would pass it is rejected
/// (`value_out_of_range`), never rounded and never a crash.
pub const MAX_PERIOD_TOTAL: Decimal = Decimal::from_parts(1_661_992_960, 1_808_227_885, 5, false, 0);

/// The largest price of one billing-period total: 10^18 in the plan's currency. The amount
/// columns (DECIMAL(38, 18)) hold up to 10^20; the bound leaves room to add the lines of an
/// invoice.
pub const MAX_PERIOD_AMOUNT: Decimal = Decimal::from_parts(2_808_348_672, 232_830_643, 0, false, 0);

/// `a * b` computed exactly, or `None` when the exact product does not fit a [`Decimal`]
/// (rust_decimal's own multiplication would round away digits instead).
pub(crate) fn exact_mul(a: Decimal, b: Decimal) -> Option<Decimal> {
    let mut mantissa = a.mantissa().checked_mul(b.mantissa())?;
    let mut scale = a.scale() + b.scale();
    while scale > 0 && mantissa % 10 == 0 {
        mantissa /= 10;
        scale -= 1;
    }
    if scale > 28 || mantissa.unsigned_abs() >= 1u128 << 96 {
        return None;
    }
    Decimal::try_from_i128_with_scale(mantissa, scale).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_are_exact_or_refused_never_rounded() {
        let q: Decimal = "123456789012.123456789".parse().unwrap();
        let p: Decimal = "0.000002800".parse().unwrap();
        assert_eq!(exact_mul(q, p).unwrap().to_string(), "345679.0092339456790092");
        let huge: Decimal = "79228162514264337593543950.335".parse().unwrap();
        assert_eq!(exact_mul(huge, "1.5".parse().unwrap()), None);
    }
}
