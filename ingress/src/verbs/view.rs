//! A run as its viewer may see it.

use switchyard_common::Run;

use crate::auth::Principal;

/// `run` as its viewer may see it: the `webhookUrl` (often a Slack hook or a URL with a token)
/// only for a viewer that [`Principal::sees_destinations`]; `None` (an inbound webhook's
/// sender) sees none.
pub(crate) fn shown(mut run: Run, viewer: Option<&Principal>) -> Run {
    if !viewer.is_some_and(Principal::sees_destinations) {
        run.webhook_url = None;
    }
    run
}
