//! # meterflow-aggregator: meters and event-time windows
//!
//! Meters are declared in the config, OpenMeter-style: an event `type`, an [`Aggregation`], a
//! value property, group-by properties and a [`WindowSize`]. [`Meters::extract`] turns one event
//! into the [`Measurement`]s it contributes (or a reject reason), and [`Aggregator`] folds
//! measurements into UTC tumbling windows keyed by (customer, subject, meter, dimensions, window).
//!
//! ```text
//!   event ──Meters::extract──► Measurement ──Aggregator::add──► window state
//!                                                          │
//!                                        Aggregator::flush ▼ at each commit
//!                                              WindowDelta rows (SUM(quantity) = window value)
//! ```
//!
//! Every flushed row is a *delta*: its `quantity` is the change of the window's value since the
//! previous flush, so `SUM(quantity)` over a window's rows equals the window's value for every
//! aggregation (SUM, COUNT, MIN, MAX, LATEST, UNIQUE_COUNT). Window values depend only on the set
//! of events, never on their arrival order (LATEST breaks ties on `(time, source, id)`).
//!
//! All of this is pure data manipulation: no I/O, no clocks.

mod bounds;
mod meter;
mod progress;
mod window;

pub use bounds::TimeBounds;
pub use meter::{Aggregation, MeasureValue, Measurement, MeterConfig, MeterError, Meters, WindowSize};
pub use progress::{LatenessPolicy, Progress};
pub use window::{Aggregator, AggregatorSnapshot, EventRef, WindowDelta, WindowKey, DEFAULT_POLICY};
