//! State versions: a kind's chain of migrations ([`Process::MIGRATIONS`]), and how a stored
//! state of an older version is brought up to date when it is read.
//!
//! Each state is stored with its schema version (`Record::schema`). Reading one of an older
//! version runs the migrations after it on its JSON, in memory; the entity's next step
//! writes the state back at the new version (a `Journal` kind: its next step writes a
//! snapshot). A state of a newer version than the code knows is refused
//! ([`CallError::StateTooNew`]), and a failing migration too
//! ([`CallError::MigrationFailed`]): the entity is quarantined, its bytes never overwritten.
//! The passes that write every outdated entity back are in `migration`.

use perennial_types::EntityKey;
use serde_json::Value;

use crate::guard::guard;
use crate::{CallError, Process};

/// The schema version of `K`'s state in this build: one more than the number of its
/// [`Process::MIGRATIONS`].
pub fn schema_version<K: Process>() -> u32 {
    u32::try_from(K::MIGRATIONS.len())
        .unwrap_or(u32::MAX - 1)
        .saturating_add(1)
}

/// Brings a stored state of schema version `schema` up to `K`'s version: `None` if it is
/// already there, else the migrated JSON.
pub(crate) fn upgrade<K: Process>(
    key: &EntityKey,
    schema: u32,
    json: &str,
) -> Result<Option<String>, CallError> {
    let supported = schema_version::<K>();
    if schema == supported {
        return Ok(None);
    }
    if schema > supported {
        return Err(CallError::StateTooNew {
            key: key.clone(),
            schema,
            supported,
        });
    }
    if schema == 0 {
        return Err(CallError::CorruptState {
            key: key.clone(),
            detail: "the state has schema version 0; versions start at 1".into(),
        });
    }
    let mut value: Value = serde_json::from_str(json).map_err(|e| CallError::CorruptState {
        key: key.clone(),
        detail: format!("the stored state is not JSON: {e}"),
    })?;
    for (from, migration) in (schema..).zip(&K::MIGRATIONS[schema as usize - 1..]) {
        let failed = |detail: String| CallError::MigrationFailed {
            key: key.clone(),
            from,
            detail,
        };
        value = guard(|| migration(value))
            .map_err(|panic| failed(format!("the migration panicked: {panic}")))?
            .map_err(|e| failed(e.to_string()))?;
    }
    serde_json::to_string(&value)
        .map(Some)
        .map_err(|e| CallError::MigrationFailed {
            key: key.clone(),
            from: supported - 1,
            detail: format!("the migrated state cannot be encoded: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ctx;
    use crate::{Migration, MigrationError};
    use perennial_types::EntityId;
    use serde_json::json;

    #[derive(Default)]
    struct Kind;

    fn add_b(mut v: Value) -> Result<Value, MigrationError> {
        v["b"] = json!(2);
        Ok(v)
    }

    fn refuse_odd(v: Value) -> Result<Value, MigrationError> {
        if v["a"].as_i64().is_some_and(|a| a % 2 == 1) {
            return Err(MigrationError::new("a is odd"));
        }
        Ok(v)
    }

    impl Process for Kind {
        const KIND: &'static str = "kind";
        const MIGRATIONS: &'static [Migration] = &[add_b, refuse_odd];
        type Msg = ();
        type Reply = ();
        type Error = std::convert::Infallible;
        fn handle(&mut self, (): (), _: &mut Ctx<'_, Self>) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    fn key() -> EntityKey {
        EntityKey::new("kind", EntityId::new("e").unwrap())
    }

    #[test]
    fn upgrades_run_the_migrations_after_the_stored_version() {
        assert_eq!(schema_version::<Kind>(), 3);
        let from_1 = upgrade::<Kind>(&key(), 1, r#"{"a":2}"#).unwrap().unwrap();
        assert_eq!(from_1, r#"{"a":2,"b":2}"#);
        // From version 2, only the second migration runs.
        let from_2 = upgrade::<Kind>(&key(), 2, r#"{"a":4}"#).unwrap().unwrap();
        assert_eq!(from_2, r#"{"a":4}"#);
        assert_eq!(upgrade::<Kind>(&key(), 3, "not even read").unwrap(), None);
    }

    #[test]
    fn refusals_name_the_entity_and_the_version() {
        let failed = upgrade::<Kind>(&key(), 1, r#"{"a":3}"#).unwrap_err();
        assert!(
            matches!(&failed, CallError::MigrationFailed { from: 2, detail, .. } if detail == "a is odd"),
            "{failed:?}"
        );
        assert!(failed.to_string().contains("kind/e"), "{failed}");
        let newer = upgrade::<Kind>(&key(), 4, "{}").unwrap_err();
        assert!(matches!(
            newer,
            CallError::StateTooNew {
                schema: 4,
                supported: 3,
                ..
            }
        ));
        assert!(matches!(
            upgrade::<Kind>(&key(), 1, "{oops").unwrap_err(),
            CallError::CorruptState { .. }
        ));
        assert!(matches!(
            upgrade::<Kind>(&key(), 0, "{}").unwrap_err(),
            CallError::CorruptState { .. }
        ));
    }
}
