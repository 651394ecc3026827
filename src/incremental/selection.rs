//! The record of a λ_o selection ([`super::select`]): what each trial gave
//! and what was kept. A checkpoint and the results JSON carry it, so it
//! lives apart from the search, which needs the trainer.

use serde::{Deserialize, Serialize};

/// One training run of the selection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// `finetune` (the reference) or `lwf`.
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_o: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    pub lr: f32,
    /// New-task validation accuracy after the last epoch; null when the
    /// run diverged.
    pub val_accuracy: Option<f64>,
    pub accepted: bool,
    pub seconds: f64,
}

/// What the selection chose and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub rule: String,
    pub reference_val_accuracy: f64,
    /// (1 − tolerance) · reference.
    pub threshold: f64,
    pub lambda_o: f32,
    pub temperature: f32,
    pub lr: f32,
    /// False when no setting reached the threshold (the most accurate LwF
    /// trial was kept).
    pub within_tolerance: bool,
    pub trials: Vec<Trial>,
    /// All trials together, the kept one included.
    pub seconds_total: f64,
}

impl Selection {
    /// The trial table, one line per trial, for people.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<9} {:>7} {:>5} {:>7} {:>9} {:>8} {:>8}\n",
            "trial", "λ_o", "T", "lr", "val acc", "seconds", "accepted"
        );
        for t in &self.trials {
            let opt = |v: Option<f32>| v.map_or("-".to_string(), |v| format!("{v}"));
            let acc = t.val_accuracy.map_or("diverged".to_string(), |a| format!("{:.2}%", 100.0 * a));
            s += &format!(
                "{:<9} {:>7} {:>5} {:>7} {:>9} {:>8.1} {:>8}\n",
                t.method,
                opt(t.lambda_o),
                opt(t.temperature),
                t.lr,
                acc,
                t.seconds,
                if t.accepted { "yes" } else { "" }
            );
        }
        s += &format!(
            "reference {:.2}%, threshold {:.2}%: chose λ_o = {}, T = {}, lr = {}{} ({:.1}s in all)",
            100.0 * self.reference_val_accuracy,
            100.0 * self.threshold,
            self.lambda_o,
            self.temperature,
            self.lr,
            if self.within_tolerance { "" } else { " (no setting within tolerance: the most accurate kept)" },
            self.seconds_total
        );
        s
    }
}
