// Package watchcache keeps many local consumers supplied with fresh, cached,
// watchable views of data whose source of truth is a remote store that answers
// blocking ("long-poll") queries or watches, such as etcd or Consul.
//
// It is a rebuild of the agent-side cache of HashiCorp Consul (agent/cache and
// its Notify): kinds of data are registered once with a fetch function,
// callers Get values (cached, single-flighted, optionally blocking on an
// index) and Notify on changes, and the cache keeps watched entries fresh
// with one background query per entry however many callers and watchers
// share it.
//
// # Using it
//
// Create a Cache with New, register each kind of data with Register (which
// returns a typed *Kind[V]), then call Kind.Get, Kind.Notify or
// Kind.NotifyCallback. A Request names the entry (Key and Partition) and
// carries the per-call options (MinIndex, Timeout, MaxAge, MustRevalidate).
// Entries are partitioned by kind, partition and key: a value fetched under
// one token is never returned to, single-flighted with, or notified to a
// caller presenting another.
//
// A source that can wait for changes without a goroutine of its own (a
// watch multiplexed on a shared stream, as etcdkv's) implements
// AsyncFetcher as well as Fetcher; its entries then cost no goroutine while
// they wait, which matters from about 10^5 watched keys on.
//
// # Design
//
// The rest of this comment is for readers of the code. It states who owns
// every goroutine and lock and how cancellation flows; the code refers back
// to it.
//
// Entry state. An entry's published state is an immutable snapshot (value,
// index, opaque state, last error, times, version) behind an atomic pointer.
// Readers load it without locks: a Get hit takes a shard read lock for the
// map lookup and nothing else. Writers (the entry's loop, Prepopulate)
// replace the snapshot as a whole under entry.mu, then wake waiters by
// closing entry.changed ("publish, then wake", as go-memdb's watch channels
// and Consul's Waiter do); the next waiter makes a new channel.
//
// Entry loop. An entry has at most one goroutine, its loop, started by
// whoever first gives it a reason to fetch (a Get that needs data, a
// watcher, Prepopulate of a refresh kind) and owned by the entry, never by
// that caller: each fetch runs under its own context derived from the
// cache's, so a cancelled caller cannot freeze an entry that others wait
// on; the entry cancels that context itself when nothing needs the result
// (evicted, idle, or preempted by a Get that needs the value now). The loop
// exits when it has no reason to run, which is decided in one place,
// entry.nextFetchLocked:
//
//	idle ──(Get miss / stale / watcher / refresh kind)──▶ waiting
//	waiting ──(due: now, after backoff, RefreshTimer or poll interval)──▶ fetching
//	fetching ──(result published)──▶ waiting, or idle when nothing needs it
//	any ──(evicted or cache closed)──▶ gone (state closed if it is an io.Closer)
//	idle or waiting ──(nobody read or watched it for ReleaseAfter)──▶ released
//	released ──(a Get or a watcher: revalidate with a fetch)──▶ fetching
//
// A released entry (release.go) keeps its last value but no upstream
// subscription: no background refresh, its State closed (by the loop on
// its way out if a fetch was using it). Its value is never served as it
// is; the next Get or Notify waits for a fetch, so one-off reads do not
// hold an upstream watch until LastGetTTL.
//
// Push sources. A kind whose Fetcher also implements AsyncFetcher runs the
// same state machine without a goroutine per entry (async.go): the entry's
// "run" is held by whichever of these will continue it, exactly one at a
// time: a worker of the cache's run pool (Cache.runs, at most GOMAXPROCS
// goroutines, which exist only while runs are queued), the entry's timer
// while it waits for backoff, a poll or the rate limit (runWait), or the
// fetch in flight, whose done queues the run again. A kick disarms the
// timer and queues the run. The run holds one count of Cache.wg from its
// start to its exit, so Close waits for in-flight async fetches to answer
// (their contexts are cancelled when Close retires the entries). An async
// fetch's context is a fetchContext: no timer of its own (one heap of
// deadlines and one timer per cache cut fetches a source leaves hanging,
// as the deadline of a pull fetch's context does), no channel until asked,
// and an AfterFunc method, so a waiting entry costs a few hundred bytes.
//
// Reasons to run: an explicit demand (a Get waiting for attempt n, recorded
// in entry.want), a refresh kind (until evicted, or until a fatal error),
// watchers, or Gets blocked on an index of a non-refresh blocking kind. When
// the last watcher or blocked Get of a non-refresh kind leaves, an in-flight
// blocking fetch is cancelled, so an unwatched key does not hold an upstream
// query open.
//
// Index rules live in index.go (stepIndex): a zero index is published as 1
// and counts as a failure for backoff, an index lower than the last one is a
// reset (a snapshot restore or a store rebuilt from scratch) that is
// delivered at once, and within one watcher indexes only grow except across
// such a reset.
//
// Watchers are data, not goroutines. A watcher is a small struct in its
// entry's watcher list with the snapshot version it last received. After
// each publish the loop walks the list with non-blocking sends
// (notify.go). A watcher whose send would block is "parked" in the queue
// of its channel (delivery.go): a channel is one send target however many
// watches share it, and its queue is a FIFO of the watches waiting for it,
// linked through the watchers themselves. Each queue has one goroutine,
// which exists only while the queue is not empty and waits on that channel
// alone: it sends the head watcher its entry's latest event, then the
// next. A publish while it waits makes the pending send stale (the queue's
// wake channel), so a parked watcher's next receive is always the latest
// value, and a slow consumer holds no events, only its place in the queue.
// Delivery costs O(1) per watcher per change whatever the mix of slow,
// late, unbuffered and shared channels, and watches sharing a channel are
// served in the order it frees up (Consul's proxycfg shares one channel
// between thousands). The price is one goroutine (a few KB) per blocked
// channel while it is blocked; at rest there is none. A closed channel
// makes a send panic: it is recovered (once per fan-out, not per send) and
// ends that watch. Callbacks run on a small bounded worker pool, one call
// at a time per watcher, with panics recovered, and never after the
// watch's context is cancelled.
//
// Blocking Gets are registered on their entry (entry.blockers) while they
// wait, with what would answer them. A publish that answers one removes it
// at once, so that the loop, deciding its next fetch before the Get's
// goroutine runs, does not fetch again for a caller that is leaving.
//
// Eviction (evict.go, expiry.go). A Get hit marks the entry used with an
// atomic flag, written only by the first hit after each check, and reads
// no clock. The expiry loop keeps a heap of idle entries by the time of
// their next check (every LastGetTTL/16): a check clears the flag, records
// the entry as seen if it was set, and evicts entries not seen for
// LastGetTTL. Watched entries and entries with waiting Gets are not
// evictable and are queued again when that ends. An optional MaxEntries
// bound evicts the least recently used unwatched entry among a sample,
// like Redis' approximated LRU, and takes it out of the heap at once, so a
// flood of one-off partitions (token rotation) keeps memory flat without a
// lock on every hit. State that is an io.Closer is closed after entry.mu
// is released: a slow Close must not stall Gets or deliveries.
//
// Locks, in the order they may be taken:
//
//	entry.mu      the entry's fields, its watchers and their delivery flags
//	shard.mu      a kind's map; taken under entry.mu to remove an evicted
//	              entry, never held while taking entry.mu
//	deliverer.mu  the channel queues and their links; taken under entry.mu
//	              (a queue's goroutine takes its head's entry.mu first)
//	workPool.mu, expiry.mu, ctxWatches.mu
//	Cache.mu      kinds and the closed flags; its read side is taken last
//	              (under any of the above) to start a goroutine
//
// Goroutines, each joined to Cache.wg: entry loops (pull sources); the
// expiry loop; one per channel queue while its channel is blocked;
// callback workers while callbacks are queued; run workers while async
// runs are queued. The only goroutines the cache does not own are the
// short ones context.AfterFunc starts to remove the watchers of a context
// that was cancelled (one AfterFunc per distinct context, ctxwatch.go).
//
// Cancellation. A caller's context bounds only that caller's wait. Watchers
// end when their context is cancelled or the cache closes. Close is a
// broadcast and a wait: it marks the cache closed, cancels the context
// every pull fetch runs under (async fetches' contexts are cancelled as
// Close retires their entries), wakes every waiting Get and entry loop
// (Cache.done) and every channel queue (its wake channel), gives every
// channel watcher a final event carrying ErrClosed (callbacks get none: a
// callback that talks to the goroutine calling Close would deadlock it),
// and waits for Cache.wg. Fetch
// functions and callbacks must return once their context is cancelled;
// Close waits for them.
package watchcache
