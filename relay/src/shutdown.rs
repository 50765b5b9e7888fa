//! Shutdown signals: the first SIGTERM or SIGINT starts a graceful drain ([`crate::server`]); a second one means
//! "now" (`main` exits 130 without waiting).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Both signals, watched for the life of the process.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// A second signal cut the drain short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forced;

/// Runs `serving` (which stops accepting and drains once `stop` is cancelled) until it ends; the first signal
/// cancels `stop`, a second one gives up waiting.
pub async fn until_signalled<T>(
    serving: impl Future<Output = T>,
    stop: CancellationToken,
    mut signals: Signals,
) -> Result<T, Forced> {
    let watch = async {
        let first = signals.next().await;
        tracing::info!(
            signal = first,
            "shutting down gracefully (send it again to exit now)"
        );
        stop.cancel();
        signals.next().await
    };
    tokio::select! {
        served = serving => Ok(served),
        second = watch => {
            tracing::warn!(signal = second, "second signal: exiting now");
            Err(Forced)
        }
    }
}

/// A cancellation token as a future that is cheap to poll often. The relay polls the drain and stop tokens on every
/// poll of every stream and connection; the token's own future takes two mutexes per poll (the token's state, then
/// the waiter list that every stream shares). `Watch` polls that future only on its first poll, when the task's
/// waker changed, or after the token woke it, and otherwise answers from one atomic load.
pub struct Watch {
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    fired: Arc<Fired>,
    /// `fired` as a waker: what the token's future wakes.
    waker: Waker,
    /// The task waker `fired` passes the wake-up on to, once registered.
    task: Option<Waker>,
}

/// Set by the token's wake-up; passed on to the task.
#[derive(Default)]
struct Fired {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Fired {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Watch {
    pub fn new(token: CancellationToken) -> Self {
        let fired = Arc::new(Fired::default());
        Self {
            cancelled: Box::pin(token.cancelled_owned()),
            waker: Waker::from(Arc::clone(&fired)),
            fired,
            task: None,
        }
    }
}

impl Future for Watch {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let same_task = this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        // A plain load on the common path (nothing fired); the flag is cleared only when it was set.
        if same_task && !this.fired.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Cleared before the token's future is polled: a wake-up during that poll sets it again.
        this.fired.woken.store(false, Ordering::Release);
        if !same_task {
            this.task = Some(cx.waker().clone());
        }
        // Registered before the token's future is polled, so a cancel in between still reaches the task.
        this.fired.task.register(cx.waker());
        this.cancelled
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    use tokio_util::sync::CancellationToken;

    use super::Watch;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_cancel_wakes_the_task_and_the_next_poll_is_ready() {
        let token = CancellationToken::new();
        let mut watch = pin!(Watch::new(token.clone()));
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(watch.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        token.cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert_eq!(watch.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn a_new_task_waker_is_the_one_woken() {
        let token = CancellationToken::new();
        let mut watch = pin!(Watch::new(token.clone()));
        let first = Arc::new(Count::default());
        let second = Arc::new(Count::default());
        let first_waker = Waker::from(Arc::clone(&first));
        let second_waker = Waker::from(Arc::clone(&second));
        assert!(
            watch
                .as_mut()
                .poll(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        assert!(
            watch
                .as_mut()
                .poll(&mut Context::from_waker(&second_waker))
                .is_pending()
        );
        token.cancel();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            watch.as_mut().poll(&mut Context::from_waker(&second_waker)),
            Poll::Ready(())
        );
    }

    #[test]
    fn a_token_cancelled_before_the_first_poll_is_ready_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        let mut watch = pin!(Watch::new(token));
        let waker = Waker::from(Arc::new(Count::default()));
        assert_eq!(
            watch.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Ready(())
        );
    }
}
