//! The query of `GET /sagas/{id}`: which page of its history and quarantined replies.

use serde::Deserialize;

use super::ApiError;
use crate::store::ViewPage;

/// Most rows of either list in one answer.
const MAX_LIMIT: i64 = 1000;

/// Every field is optional and an empty one counts as absent; without any, the latest 100
/// history rows and the latest 100 quarantined replies.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ViewQuery {
    /// History rows at most (the latest ones, or the latest before `history_before`).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000, default = 100)]
    history_limit: Option<String>,
    /// Only history rows with a `version` below this: the first `version` of the previous
    /// answer pages back.
    #[param(value_type = Option<i64>, minimum = 1)]
    history_before: Option<String>,
    /// Quarantined replies at most (the latest ones, or the latest before
    /// `quarantined_before`).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000, default = 100)]
    quarantined_limit: Option<String>,
    /// Only quarantined replies with an `id` below this: the first `id` of the previous
    /// answer pages back.
    #[param(value_type = Option<i64>, minimum = 1)]
    quarantined_before: Option<String>,
}

fn number(name: &str, v: Option<String>, range: (i64, i64)) -> Result<Option<i64>, ApiError> {
    match v.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (range.0..=range.1).contains(n))
            .map(Some)
            .ok_or_else(|| {
                ApiError::BadRequest(if range.1 == i64::MAX {
                    format!("{name} must be a whole number of at least {}", range.0)
                } else {
                    format!(
                        "{name} must be a whole number from {} to {}",
                        range.0, range.1
                    )
                })
            }),
    }
}

impl ViewQuery {
    /// Parses a query string; 400 naming the parameter that is wrong.
    pub fn parse(query: &str) -> Result<ViewPage, ApiError> {
        let q: ViewQuery = serde_urlencoded::from_str(query)
            .map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
        let defaults = ViewPage::default();
        Ok(ViewPage {
            history_limit: number("history_limit", q.history_limit, (1, MAX_LIMIT))?
                .unwrap_or(defaults.history_limit),
            history_before: number("history_before", q.history_before, (1, i64::MAX))?,
            quarantined_limit: number("quarantined_limit", q.quarantined_limit, (1, MAX_LIMIT))?
                .unwrap_or(defaults.quarantined_limit),
            quarantined_before: number("quarantined_before", q.quarantined_before, (1, i64::MAX))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_parameters_ask_for_the_latest_hundred_of_each() {
        assert_eq!(ViewQuery::parse("").ok(), Some(ViewPage::default()));
        assert_eq!(
            ViewQuery::parse("history_limit=&unrelated=1").ok(),
            Some(ViewPage::default())
        );
    }

    #[test]
    fn limits_and_positions_are_taken_within_their_ranges() {
        let p = ViewQuery::parse(
            "history_limit=1000&history_before=7&quarantined_limit=1&quarantined_before=3",
        )
        .ok();
        assert_eq!(
            p,
            Some(ViewPage {
                history_limit: 1000,
                history_before: Some(7),
                quarantined_limit: 1,
                quarantined_before: Some(3),
            })
        );
        for bad in [
            "history_limit=0",
            "history_limit=1001",
            "history_limit=ten",
            "history_before=0",
            "history_before=-1",
            "quarantined_limit=5000",
            "quarantined_before=x",
        ] {
            let name = bad.split('=').next().unwrap_or_default();
            match ViewQuery::parse(bad) {
                Err(ApiError::BadRequest(e)) => assert!(e.contains(name), "{bad}: {e}"),
                other => panic!("{bad}: {:?}", other.ok()),
            }
        }
    }
}
