//! Agents: who is calling.

use std::fmt;

use crate::budget::BudgetSpec;

/// An agent: who is calling. Every agent belongs to exactly one tenant.
pub struct Agent {
    /// The agent id (the user part of `Proxy-Authorization: Basic`).
    pub id: String,
    /// The tenant the agent belongs to.
    pub tenant: String,
    /// The agent's own budget, besides its tenant's and its route's.
    pub budget: Option<BudgetSpec>,
    pub(crate) token_sha256: [u8; 32],
}

impl Agent {
    pub(crate) fn new(
        id: String,
        tenant: String,
        budget: Option<BudgetSpec>,
        token_sha256: [u8; 32],
    ) -> Agent {
        Agent {
            id,
            tenant,
            budget,
            token_sha256,
        }
    }
}

impl fmt::Debug for Agent {
    /// The token hash is left out: a hash of a weak token can be brute-forced.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}
