//! What the grouped writers of the stores share (those on the runtime's
//! [`infragpt_actors::group_commit::Batcher`]): a batch refused for one item's data is written
//! again item by item, so that only that item fails.

use std::future::Future;

use super::error::StoreError;

/// Writes `items` with `write` (one statement for all of them, one outcome per item in the
/// same order). When the database refuses the data of a batch of several, each item is
/// written alone, so only the bad one fails; any other failure fails every item: the first
/// with the error, the others with [`StoreError::Batch`] naming it.
pub(crate) async fn write_batch<'a, I, O, F, Fut>(
    items: &'a [I],
    write: F,
) -> Vec<Result<O, StoreError>>
where
    F: Fn(&'a [I]) -> Fut,
    Fut: Future<Output = Result<Vec<Result<O, StoreError>>, StoreError>>,
{
    match write(items).await {
        Ok(outcomes) => outcomes,
        Err(StoreError::Data(_)) if items.len() > 1 => {
            let mut outcomes = Vec::with_capacity(items.len());
            for item in items {
                let one = write(std::slice::from_ref(item)).await;
                outcomes.push(one.and_then(|mut one| {
                    one.pop()
                        .unwrap_or_else(|| Err(StoreError::Batch("no outcome for an item".into())))
                }));
            }
            outcomes
        }
        Err(e) => fail_all(e, items.len()),
    }
}

/// Every item of a batch failed with `e`: the first with it, the others with
/// [`StoreError::Batch`] naming it.
fn fail_all<O>(e: StoreError, items: usize) -> Vec<Result<O, StoreError>> {
    let error = e.to_string();
    let mut outcomes = Vec::with_capacity(items);
    outcomes.push(Err(e));
    outcomes.extend((1..items).map(|_| Err(StoreError::Batch(error.clone()))));
    outcomes
}
