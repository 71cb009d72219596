// The configuration of this pass: built once from the directives the C command table stored,
// then read by the parent and, inherited at fork, by every multiplexer and worker.
//
// Swift globals are per process and start fresh each time Apache reloads the module (it does on
// every restart). The module is single-threaded (it forks); nothing here is touched concurrently.
import CPeruserShim
import Glibc
import PeruserCore

nonisolated(unsafe) var configuration = Configuration()

func string(_ pointer: UnsafePointer<CChar>?) -> String? {
    pointer.map { String(cString: $0) }
}

/// An environment's name for the log.
func environmentLabel(_ index: Int) -> String {
    configuration.environments[index]?.name ?? "#\(index)"
}
