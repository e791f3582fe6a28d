//! The one integration test binary: every module runs the real service over HTTP.

mod helpers;

mod bench;
mod browser;
mod cli;
mod concurrency;
mod contract;
mod dashboards;
mod events;
mod fraud;
mod helm;
mod ops;
mod orders;
mod pages;
mod privacy;
mod replicas;
mod requests;
mod smpp;
mod sms;
mod store;
mod twilio;
mod verifications;
mod webdriver;
