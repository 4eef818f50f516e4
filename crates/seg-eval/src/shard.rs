//! Sharded prediction: N independent processes (a Slurm job array, a Kubernetes Indexed Job, N
//! shells) each predict a deterministic share of the sorted cases, so that together they cover
//! the set exactly once.

use anyhow::{Context, bail, ensure};

use crate::predict::Job;

/// Share `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `K/N` with 1 ≤ K ≤ N.
    pub fn parse(text: &str) -> anyhow::Result<Shard> {
        let parsed = text
            .split_once('/')
            .and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)));
        let Some((index, count)) = parsed else {
            bail!("--shard {text:?}: expected K/N, e.g. 3/10");
        };
        Shard::new(index, count).with_context(|| format!("--shard {text}"))
    }

    pub fn new(index: usize, count: usize) -> anyhow::Result<Shard> {
        ensure!(
            count >= 1 && (1..=count).contains(&index),
            "shard {index} of {count}: need 1 ≤ K ≤ N"
        );
        Ok(Shard { index, count })
    }

    /// The shard a scheduler gives this process, read through `var`: a Slurm job array
    /// (`SLURM_ARRAY_TASK_ID` counted from `SLURM_ARRAY_TASK_MIN`, of `SLURM_ARRAY_TASK_COUNT`),
    /// or a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`, from 0, of `count`, which such a
    /// job does not publish). None outside both.
    pub fn from_scheduler(
        var: impl Fn(&str) -> Option<String>,
        count: Option<usize>,
    ) -> anyhow::Result<Option<Shard>> {
        let number = |name: &str| -> anyhow::Result<Option<usize>> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .with_context(|| format!("{name}={v:?} is not a whole number"))
                })
                .transpose()
        };
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let total = number("SLURM_ARRAY_TASK_COUNT")?
                .context("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")?;
            let first = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            ensure!(
                id >= first,
                "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {first}"
            );
            return Shard::new(id - first + 1, total)
                .map(Some)
                .context("the Slurm job array (use --array=0-(N-1) or 1-N, one task per shard)");
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = count.context(
                "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job): give the job's \
                 completions with --shards N",
            )?;
            return Shard::new(index + 1, count)
                .map(Some)
                .context("the Kubernetes Indexed Job");
        }
        Ok(None)
    }

    /// This shard's jobs: every `count`-th of the jobs sorted by input and series, starting at
    /// the `index`-th (round robin, so shards of a sorted cohort get similar cases).
    pub fn select(self, mut jobs: Vec<Job>) -> Vec<Job> {
        jobs.sort_by(|a, b| (&a.input, &a.series).cmp(&(&b.input, &b.series)));
        jobs.into_iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index - 1)
            .map(|(_, job)| job)
            .collect()
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::*;

    fn job(name: &str) -> Job {
        Job {
            input: PathBuf::from(format!("in/{name}.nii.gz")),
            series: None,
            output: PathBuf::from(format!("out/{name}.nii.gz")),
            probabilities: None,
            lungs: None,
            all_frames: false,
            reference: None,
        }
    }

    #[test]
    fn shards_one_to_n_partition_the_cases_whatever_their_order() {
        let names: Vec<String> = (0..23).map(|i| format!("lung_{i:03}")).collect();
        let mut shuffled: Vec<Job> = names.iter().map(|n| job(n)).collect();
        shuffled.reverse();
        shuffled.swap(3, 17);
        for count in [1, 2, 5, 23, 30] {
            let mut seen: Vec<PathBuf> = Vec::new();
            for index in 1..=count {
                let shard = Shard::new(index, count).unwrap();
                let mine = shard.select(shuffled.clone());
                let again = shard.select(names.iter().map(|n| job(n)).collect());
                assert_eq!(
                    mine.iter().map(|j| &j.input).collect::<Vec<_>>(),
                    again.iter().map(|j| &j.input).collect::<Vec<_>>(),
                    "the share depends on the cases, not on their order"
                );
                assert!(mine.len().abs_diff(23 / count) <= 1);
                seen.extend(mine.into_iter().map(|j| j.input));
            }
            seen.sort();
            let all: Vec<PathBuf> = names.iter().map(|n| job(n).input).collect();
            assert_eq!(seen, all, "{count} shards: every case exactly once");
        }
    }

    #[test]
    fn the_shard_comes_from_the_command_line_or_the_scheduler() {
        assert_eq!(Shard::parse("3/10").unwrap(), Shard::new(3, 10).unwrap());
        for bad in ["0/4", "5/4", "3", "a/b", "1/0"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        let env = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |name: &str| map.get(name).cloned()
        };
        assert_eq!(Shard::from_scheduler(env(&[]), None).unwrap(), None);
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
        ]);
        assert_eq!(
            Shard::from_scheduler(slurm, None).unwrap(),
            Some(Shard::new(1, 8).unwrap())
        );
        let from_one = env(&[
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ]);
        assert_eq!(
            Shard::from_scheduler(from_one, None).unwrap(),
            Some(Shard::new(8, 8).unwrap())
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "4")]);
        assert_eq!(
            Shard::from_scheduler(&k8s, Some(5)).unwrap(),
            Some(Shard::new(5, 5).unwrap())
        );
        assert!(
            Shard::from_scheduler(&k8s, None).is_err(),
            "an Indexed Job needs its count"
        );
        assert!(
            Shard::from_scheduler(&k8s, Some(4)).is_err(),
            "index 4 of 4"
        );
    }
}
