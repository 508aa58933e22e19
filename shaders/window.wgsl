// The sliding window of attention (pasted by `#include window`): with p.window > 0 a query
// at position `pos` sees keys first_key(pos) ..= pos, its own included; window 0 sees all.

fn first_key(pos: u32) -> u32 {
    return select(0u, pos + 1u - p.window, p.window > 0u && pos >= p.window);
}

// The last of positions 0 .. len whose query sees key `j`.
fn last_query(j: u32, len: u32) -> u32 {
    return select(len - 1u, min(len - 1u, j + p.window - 1u), p.window > 0u);
}
