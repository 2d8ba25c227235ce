//! Splitting large inputs across cores, with the same output in the same order as a
//! sequential pass: render and diff of 100k objects use it.

/// `items.iter().filter_map(f)` on every core for large inputs, in order: the output is
/// the same as the sequential one (objects are independent; fleets are large).
pub(crate) fn filter_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Option<R> + Sync,
) -> Vec<R> {
    filter_map_min(items, 2048, f)
}

/// [`filter_map`], splitting only when every core gets at least `min_chunk` items (fewer
/// for expensive items, such as the pieces of a snapshot).
pub(crate) fn filter_map_min<T: Sync, R: Send>(
    items: &[T],
    min_chunk: usize,
    f: impl Fn(&T) -> Option<R> + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads < 2 || items.len() < 2 * min_chunk {
        return items.iter().filter_map(f).collect();
    }
    let chunk = items.len().div_ceil(threads).max(min_chunk);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().filter_map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}
