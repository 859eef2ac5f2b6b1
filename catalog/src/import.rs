//! Import files: TOML and JSON in the reference-data format (`[[customers]]`, `[[plans]]`), and
//! CSV exports of accounts from a CRM, read through a column mapping.
//!
//! CSV columns (the header row names them; `--column field=Header` maps other names):
//!
//! | field | required | meaning |
//! | --- | --- | --- |
//! | `id` | always | the customer id |
//! | `name` | no | display name |
//! | `currency` | new customers | ISO 4217 billing currency |
//! | `legal_entity` | new customers | the legal entity that bills the customer |
//! | `erp_customer_id` | new customers | the customer's id in the ERP |
//! | `subjects` | new customers | usage subjects it owns, separated by `;` or spaces |
//! | `plan` | no | the plan of a new customer (from the beginning of time) |
//! | `billing_anchor_day` | no | day of the month its billing periods start (1 to 28, default 1) |
//! | `publish_subjects` | no | NATS subjects its usage may arrive on, separated by `;` or spaces |
//!
//! Every other column is a free attribute of the customer (`segment`, `region`, ...), kept by
//! its header name.
//!
//! A row for a customer the catalog already has updates the mapped columns whose cells are not
//! empty and keeps everything else (subscriptions included): a CRM knows accounts, not plans.

use std::collections::BTreeMap;
use std::path::Path;

use meterflow_ingest::{CustomerConfig, SubjectConfig};

use crate::model::{Catalog, Records};
use crate::{CatalogError, Result};

/// The fields a CSV column can fill.
pub const CSV_FIELDS: &[&str] = &[
    "id",
    "name",
    "currency",
    "legal_entity",
    "erp_customer_id",
    "subjects",
    "plan",
    "billing_anchor_day",
    "publish_subjects",
];

/// Which CSV header fills which field; a field not mapped is read from the column of its own
/// name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsvMapping {
    headers: BTreeMap<String, String>,
}

impl CsvMapping {
    /// Parses `field=Header` pairs (as given to `--column`).
    pub fn parse(pairs: &[String]) -> Result<CsvMapping> {
        let mut headers = BTreeMap::new();
        for pair in pairs {
            let Some((field, header)) = pair.split_once('=') else {
                return Err(mapping_error(format!("--column {pair:?}: write it as field=Header")));
            };
            let field = field.trim();
            if !CSV_FIELDS.contains(&field) {
                return Err(mapping_error(format!(
                    "--column {pair:?}: `{field}` is not a field; the fields are {}",
                    CSV_FIELDS.join(", ")
                )));
            }
            headers.insert(field.to_string(), header.trim().to_string());
        }
        Ok(CsvMapping { headers })
    }

    fn header<'a>(&'a self, field: &'a str) -> &'a str {
        self.headers.get(field).map_or(field, String::as_str)
    }
}

fn mapping_error(message: String) -> CatalogError {
    CatalogError::File { path: "--column".into(), message }
}

/// Reads an import file by its extension: `.toml`, `.json` or `.csv` (CSV rows are merged with
/// the customers `current` already holds).
pub fn read_records(path: &Path, mapping: &CsvMapping, current: &Catalog) -> Result<Records> {
    let origin = path.display().to_string();
    let file_error = |message: String| CatalogError::File { path: origin.clone(), message };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(format!("cannot read the file: {e}")))?;
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    let records = match extension.as_str() {
        "toml" => toml::from_str::<Records>(&text).map_err(|e| file_error(e.to_string()))?,
        "json" => serde_json::from_str::<Records>(&text).map_err(|e| file_error(e.to_string()))?,
        "csv" => read_csv(&text, mapping, current).map_err(file_error)?,
        other => {
            return Err(file_error(format!(
                "unknown file type {other:?}: give a .toml or .json file in the reference-data format, or a .csv \
                 export of accounts"
            )))
        }
    };
    records.check_unique(&origin)?;
    Ok(records)
}

fn list(cell: &str) -> Vec<String> {
    cell.split([';', ' ', '\t']).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// The CSV rows as customers: new ones built from their cells, known ones updated.
fn read_csv(text: &str, mapping: &CsvMapping, current: &Catalog) -> std::result::Result<Records, String> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let column = |field: &str| headers.iter().position(|h| h == mapping.header(field));
    if column("id").is_none() {
        return Err(format!(
            "no column {:?} for the customer id (map another with --column id=Header)",
            mapping.header("id")
        ));
    }
    for (field, header) in &mapping.headers {
        if column(field).is_none() {
            return Err(format!("--column {field}={header}: the file has no column {header:?}"));
        }
    }
    let columns: Vec<(&str, Option<usize>)> = CSV_FIELDS.iter().map(|f| (*f, column(f))).collect();
    let mapped: Vec<usize> = columns.iter().filter_map(|(_, i)| *i).collect();
    let extra: Vec<(usize, &str)> = headers.iter().enumerate().filter(|(i, _)| !mapped.contains(i)).collect();
    let mut customers = Vec::new();
    for (row, record) in reader.records().enumerate() {
        // Line numbers as an editor shows them: the header is line 1.
        let line = row + 2;
        let record = record.map_err(|e| format!("line {line}: {e}"))?;
        let cells: BTreeMap<&str, &str> = columns
            .iter()
            .filter_map(|(field, i)| Some((*field, i.and_then(|i| record.get(i))?)))
            .filter(|(_, cell)| !cell.is_empty())
            .collect();
        let mut customer = customer_of(&cells, mapping, current).map_err(|e| format!("line {line}: {e}"))?;
        for (i, header) in &extra {
            if let Some(value) = record.get(*i).filter(|v| !v.is_empty()) {
                customer.attributes.insert(header.to_string(), value.to_string());
            }
        }
        customers.push(customer);
    }
    Ok(Records { customers, plans: Vec::new() })
}

/// One CSV row's customer: the known record with the row's cells over it, or a new one.
fn customer_of(
    cells: &BTreeMap<&str, &str>,
    mapping: &CsvMapping,
    current: &Catalog,
) -> std::result::Result<CustomerConfig, String> {
    let id = cells.get("id").ok_or_else(|| format!("column {:?} is empty", mapping.header("id")))?;
    let text = |field: &str| cells.get(field).map(|s| s.to_string());
    let required = |field: &str| {
        text(field)
            .ok_or_else(|| format!("customer `{id}` is new, and column {:?} ({field}) is empty", mapping.header(field)))
    };
    let anchor =
        match cells.get("billing_anchor_day") {
            Some(day) => Some(day.parse::<u32>().map_err(|_| {
                format!("customer `{id}`: billing_anchor_day {day:?} is not a day of the month (1 to 28)")
            })?),
            None => None,
        };
    let mut customer = match current.customer(id) {
        Some(known) => known.clone(),
        None => CustomerConfig {
            id: id.to_string(),
            name: None,
            subjects: list(&required("subjects")?).into_iter().map(SubjectConfig::Always).collect(),
            currency: required("currency")?,
            legal_entity: required("legal_entity")?,
            erp_customer_id: required("erp_customer_id")?,
            plan: None,
            subscriptions: Vec::new(),
            billing_anchor_day: 1,
            publish_subjects: Vec::new(),
            attributes: Default::default(),
        },
    };
    let known = current.customer(id).is_some();
    if let Some(name) = text("name") {
        customer.name = Some(name);
    }
    if let Some(subjects) = text("subjects") {
        customer.subjects = list(&subjects).into_iter().map(SubjectConfig::Always).collect();
    }
    if let Some(publish) = text("publish_subjects") {
        customer.publish_subjects = list(&publish);
    }
    for (field, slot) in [
        ("currency", &mut customer.currency),
        ("legal_entity", &mut customer.legal_entity),
        ("erp_customer_id", &mut customer.erp_customer_id),
    ] {
        if let Some(v) = text(field) {
            *slot = v;
        }
    }
    if let Some(day) = anchor {
        customer.billing_anchor_day = day;
    }
    if let Some(plan) = text("plan") {
        let same = customer.plan.as_deref() == Some(plan.as_str()) && customer.subscriptions.is_empty();
        if known && !same {
            return Err(format!(
                "customer `{id}` exists: a plan change needs the date it takes effect; give it as \
                 [[customers.subscriptions]] in a TOML or JSON file"
            ));
        }
        customer.plan = Some(plan);
    }
    Ok(customer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::records;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    fn known() -> Catalog {
        let mut c = Catalog::default();
        c.apply(&records(
            r#"
            [[customers]]
            id = "acme"
            subjects = ["acme"]
            currency = "USD"
            legal_entity = "us"
            erp_customer_id = "C1"
            [[customers.subscriptions]]
            plan = "std"
            start = "2026-01-01"
            "#,
        ));
        c
    }

    #[test]
    fn a_crm_export_adds_new_customers_and_updates_known_ones_through_the_column_mapping() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = write(
            dir.path(),
            "accounts.csv",
            "Account ID,Account Name,Currency,Entity,ERP,Subjects,plan,Segment\n\
             acme,Acme Corp,,,,acme; acme-eu,,enterprise\n\
             initech,Initech,EUR,de,C9,initech,std-eur,\n",
        );
        let mapping = CsvMapping::parse(&[
            "id=Account ID".into(),
            "name=Account Name".into(),
            "currency=Currency".into(),
            "legal_entity=Entity".into(),
            "erp_customer_id=ERP".into(),
            "subjects=Subjects".into(),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let r = read_records(&path, &mapping, &known()).unwrap_or_else(|e| panic!("{e}"));
        let acme = &r.customers[0];
        assert_eq!(acme.name.as_deref(), Some("Acme Corp"));
        assert_eq!(acme.subjects, [SubjectConfig::from("acme"), SubjectConfig::from("acme-eu")]);
        assert_eq!(acme.currency, "USD", "an empty cell keeps the known value");
        assert_eq!(acme.subscriptions.len(), 1, "a CRM row keeps the subscriptions");
        assert_eq!(
            acme.attributes.get("Segment").map(String::as_str),
            Some("enterprise"),
            "other columns are attributes"
        );
        let initech = &r.customers[1];
        assert_eq!((initech.currency.as_str(), initech.plan.as_deref()), ("EUR", Some("std-eur")));
    }

    #[test]
    fn a_csv_row_that_misses_what_a_new_customer_needs_names_the_line_and_the_column() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = write(dir.path(), "a.csv", "id,currency,subjects\nnewco,,newco\n");
        let e = read_records(&path, &CsvMapping::default(), &known()).unwrap_err().to_string();
        assert!(
            e.ends_with("a.csv: line 2: customer `newco` is new, and column \"currency\" (currency) is empty"),
            "{e}"
        );
        let path = write(dir.path(), "b.csv", "id,plan\nacme,other\n");
        let e = read_records(&path, &CsvMapping::default(), &known()).unwrap_err().to_string();
        assert!(e.contains("line 2: customer `acme` exists: a plan change needs the date"), "{e}");
        let e = CsvMapping::parse(&["colour=Hue".into()]).unwrap_err().to_string();
        assert!(e.contains("`colour` is not a field"), "{e}");
    }

    #[test]
    fn toml_and_json_files_in_the_reference_format_are_read_and_other_types_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let toml = write(dir.path(), "c.toml", "[[plans]]\nid = \"p\"\ncurrency = \"USD\"\nversions = []\n");
        assert_eq!(read_records(&toml, &CsvMapping::default(), &known()).map(|r| r.plans.len()).ok(), Some(1));
        let json = write(dir.path(), "c.json", r#"{"plans":[{"id":"p","currency":"USD","versions":[]}]}"#);
        assert_eq!(read_records(&json, &CsvMapping::default(), &known()).map(|r| r.plans.len()).ok(), Some(1));
        let bad = write(dir.path(), "c.json", r#"{"plan":[]}"#);
        let e = read_records(&bad, &CsvMapping::default(), &known()).unwrap_err().to_string();
        assert!(e.contains("unknown field `plan`"), "{e}");
        let xml = write(dir.path(), "c.xml", "<x/>");
        let e = read_records(&xml, &CsvMapping::default(), &known()).unwrap_err().to_string();
        assert!(e.contains("unknown file type \"xml\""), "{e}");
    }
}
