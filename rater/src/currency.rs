//! ISO 4217 currencies and their minor units.

/// A validated ISO 4217 currency code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Currency {
    /// The three-letter code, upper case.
    pub code: String,
    /// Number of minor-unit digits (USD 2, JPY 0, BHD 3).
    pub minor_units: u32,
}

/// Minor units of the ISO 4217 currencies meterflow accepts, or `None` for an unknown code.
pub fn minor_units(code: &str) -> Option<u32> {
    let units = match code {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
        | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        "AED" | "ARS" | "AUD" | "BDT" | "BGN" | "BRL" | "CAD" | "CHF" | "CNY" | "COP" | "CZK" | "DKK" | "EGP"
        | "EUR" | "GBP" | "HKD" | "HUF" | "IDR" | "ILS" | "INR" | "KES" | "MAD" | "MXN" | "MYR" | "NGN" | "NOK"
        | "NZD" | "PEN" | "PHP" | "PKR" | "PLN" | "QAR" | "RON" | "RSD" | "SAR" | "SEK" | "SGD" | "THB" | "TRY"
        | "TWD" | "UAH" | "USD" | "ZAR" => 2,
        _ => return None,
    };
    Some(units)
}

impl Currency {
    /// Parses an ISO 4217 code; `None` when the code is unknown.
    pub fn parse(code: &str) -> Option<Currency> {
        minor_units(code).map(|minor_units| Currency { code: code.to_string(), minor_units })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_follow_iso_4217() {
        assert_eq!(minor_units("USD"), Some(2));
        assert_eq!(minor_units("JPY"), Some(0));
        assert_eq!(minor_units("BHD"), Some(3));
        assert_eq!(minor_units("usd"), None);
        assert_eq!(minor_units("XXX"), None);
    }
}
