//! Daily token budgets: what each tenant's answers cost, and refusing new work once a
//! tenant's tokens for the UTC day are spent.
//!
//! Usage comes from the terminal event of every upstream stream of an answer (see
//! [`crate::dialect::Usage`]); a [`Meter`] turns those reports into the tokens not counted yet
//! (a run of the Assistants API reports its whole usage so far at each round, a response only
//! its own). [`spend`] adds them to `chatbot_proxy_tokens_total` and, for a tenant with a
//! budget, to its count for the day in the shared store (key `budget:{tenant}`, a
//! [`Window::DAY`] that resets at midnight UTC, shared by a fleet on Redis). [`check`] refuses
//! create-thread and process-message with 429 `budget_exhausted` once the count reaches the
//! budget, until midnight UTC. An answer already under way finishes: the budget can be
//! exceeded by the answers in flight when it runs out.

use crate::app::AppState;
use crate::config::Tenant;
use crate::dialect::{Dialect, Usage};
use crate::errors::ApiError;
use crate::store::{Count, Window};

/// The store key of `tenant`'s daily count.
fn key(tenant: &Tenant) -> String {
    format!("budget:{}", tenant.name)
}

/// Refuse when `tenant` has a budget and has spent it today; nothing else is asked of the
/// store for a tenant without one.
pub async fn check(state: &AppState, tenant: &Tenant) -> Result<(), ApiError> {
    let Some(budget) = tenant.daily_token_budget else {
        return Ok(());
    };
    let count = state.store.peek(&key(tenant), Window::DAY).await;
    match refusal(budget, count) {
        None => Ok(()),
        Some(err) => {
            log::info!(
                "tenant {}: daily token budget of {budget} spent ({} used); refusing until \
                 midnight UTC",
                tenant.name,
                count.total
            );
            Err(err)
        }
    }
}

/// The refusal for a day's `count` against `budget`, if it is spent.
fn refusal(budget: u64, count: Count) -> Option<ApiError> {
    (count.total >= budget).then(|| ApiError::budget_exhausted(count.retry_after_secs()))
}

/// Count `used` tokens of one of `tenant`'s answers: in the metrics, and against its budget.
pub async fn spend(state: &AppState, tenant: &Tenant, used: Usage) {
    if used == Usage::default() {
        return;
    }
    state.metrics.tokens(&tenant.name, used.input, used.output);
    if tenant.daily_token_budget.is_some() && used.total > 0 {
        state.store.hit(&key(tenant), used.total, Window::DAY).await;
    }
}

/// Adds up the usage reports of one answer's upstream streams, counting every token once.
#[derive(Debug)]
pub struct Meter {
    /// Each report covers every earlier stream of the answer too (one Assistants run).
    cumulative: bool,
    /// The largest report so far, for cumulative reports.
    seen: Usage,
}

impl Meter {
    pub fn new(dialect: Dialect) -> Meter {
        Meter {
            cumulative: dialect.usage_is_cumulative(),
            seen: Usage::default(),
        }
    }

    /// The tokens of one stream's report not counted yet (nothing without a report).
    pub fn fresh(&mut self, report: Option<Usage>) -> Usage {
        let Some(report) = report else {
            return Usage::default();
        };
        if !self.cumulative {
            return report;
        }
        let fresh = report.beyond(self.seen);
        self.seen = Usage {
            input: self.seen.input.max(report.input),
            output: self.seen.output.max(report.output),
            total: self.seen.total.max(report.total),
        };
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input,
            output,
            total: input + output,
        }
    }

    #[test]
    fn a_runs_growing_usage_is_counted_once() {
        let mut meter = Meter::new(Dialect::Assistants);
        // A tool round, then the answer: the run's usage covers both.
        assert_eq!(meter.fresh(Some(usage(22, 8))), usage(22, 8));
        assert_eq!(meter.fresh(Some(usage(44, 11))), usage(22, 3));
        assert_eq!(meter.fresh(None), Usage::default());
        // The same report again, or a smaller one, adds nothing.
        assert_eq!(meter.fresh(Some(usage(44, 11))), Usage::default());
        assert_eq!(meter.fresh(Some(usage(40, 2))), Usage::default());
    }

    #[test]
    fn each_response_counts_on_its_own() {
        let mut meter = Meter::new(Dialect::Responses);
        assert_eq!(meter.fresh(Some(usage(30, 8))), usage(30, 8));
        assert_eq!(meter.fresh(Some(usage(20, 3))), usage(20, 3));
        assert_eq!(meter.fresh(None), Usage::default());
    }

    #[test]
    fn a_spent_budget_refuses_until_the_window_ends() {
        let count = |total| Count {
            total,
            resets_in: Duration::from_millis(60_500),
        };
        assert_eq!(refusal(100, count(99)), None);
        let refused = refusal(100, count(100)).expect("spent");
        assert_eq!(refused.status, 429);
        assert_eq!(refused.code, "budget_exhausted");
        assert_eq!(refused.retry_after.as_deref(), Some("61"));
        assert!(refusal(100, count(250)).is_some());
    }
}
