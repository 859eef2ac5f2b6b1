//! TEMPORARY exploration tool for the query benchmark (not to be committed).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use deltalake::datafusion::execution::context::{SessionConfig, SessionContext};
use meterflow_sink::deltalake;
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data_dir = std::path::PathBuf::from(&args[1]);
    let sql_file = &args[2];
    let sql = std::fs::read_to_string(sql_file).unwrap();
    let mut cfg = SessionConfig::new();
    for kv in std::env::var("DF_SET").unwrap_or_default().split(';').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap();
        cfg.options_mut().set(k, v).unwrap();
    }
    let with_session = std::env::var("WITH_SESSION").is_ok();
    for _ in 0..std::env::var("REPEAT").ok().and_then(|s| s.parse().ok()).unwrap_or(1) {
        let t = Instant::now();
        let ctx = SessionContext::new_with_config(cfg.clone());
        let url = meterflow_sink::table_url(&data_dir, "usage_summaries").unwrap();
        let table = deltalake::open_table(url).await.unwrap();
        let t_open = t.elapsed();
        let provider = if with_session {
            std::sync::Arc::new(
                table.table_provider().with_session(std::sync::Arc::new(ctx.state())).build().await.unwrap(),
            ) as _
        } else {
            table.table_provider().await.unwrap()
        };
        ctx.register_table("summaries_now", provider).unwrap();
        let df = ctx.sql(&sql).await.unwrap();
        let t_plan = t.elapsed();
        let batches = df.collect().await.unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        eprintln!("open {:?} plan {:?} total {:?} rows {rows}", t_open, t_plan, t.elapsed());
        if rows < 100 && std::env::var("SHOW").is_ok() {
            println!("{}", deltalake::arrow::util::pretty::pretty_format_batches(&batches).unwrap());
        }
    }
}
