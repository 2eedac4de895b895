//! `flash-sale-room` (placeholder).
use crate::scenarios::{Ctx, ScenarioResult};
pub(crate) fn run(_ctx: &Ctx<'_>) -> Result<ScenarioResult, String> {
    Err("not yet".to_owned())
}
