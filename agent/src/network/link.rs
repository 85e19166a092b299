//! Links, addresses and routes through rtnetlink.
//!
//! Thin async helpers over an [`rtnetlink::Handle`]; they work in whatever namespace the handle's
//! socket was opened in (the host's for bridges and veth host ends, a sandbox's when called
//! through `netns::run_in`). Every helper is idempotent where the kernel allows it: an address
//! that is already there, or a link that is already gone, is success.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::error::{NetError, Result};
use super::ipnet::Ipv4Net;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |source| NetError::Netlink { op, source }
}

/// The link called `name`, if any.
pub async fn get(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(format!("look up link {name}"))(e)),
    }
}

/// Index of the link called `name`, if any.
pub async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>> {
    Ok(get(h, name).await?.map(|m| m.header.index))
}

/// Names of every link.
pub async fn names(h: &Handle) -> Result<Vec<String>> {
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("list links"))?;
    Ok(links
        .iter()
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
        })
        .collect())
}

/// Brings `name` up.
pub async fn set_up_by_name(h: &Handle, name: &str) -> Result<()> {
    let idx = index_of(h, name).await?.ok_or_else(|| NetError::Sys {
        op: format!("bring {name} up: no such link"),
        source: nix::Error::ENODEV,
    })?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl(format!("bring {name} up")))
}

/// Adds `ip/prefix` to link `idx`; an address already present is fine.
pub async fn add_address(h: &Handle, idx: u32, ip: Ipv4Addr, prefix: u8, what: &str) -> Result<()> {
    match h.address().add(idx, IpAddr::V4(ip), prefix).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(nl(format!("add address {ip}/{prefix} to {what}"))(e)),
    }
}

/// Makes sure bridge `name` exists, holds `gateway/prefix` and is up.
pub async fn ensure_bridge(h: &Handle, name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<()> {
    let idx = match get(h, name).await? {
        Some(m) => m.header.index,
        None => {
            h.link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
                .map_err(nl(format!("create bridge {name}")))?;
            index_of(h, name).await?.ok_or_else(|| NetError::Sys {
                op: format!("bridge {name} vanished after creation"),
                source: nix::Error::ENODEV,
            })?
        }
    };
    add_address(h, idx, gateway, prefix, &format!("bridge {name}")).await?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl(format!("bring bridge {name} up")))
}

/// Deletes link `name`; a missing link is fine.
pub async fn delete(h: &Handle, name: &str) -> Result<()> {
    let Some(idx) = index_of(h, name).await? else {
        return Ok(());
    };
    match h.link().del(idx).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(nl(format!("delete link {name}"))(e)),
    }
}

/// Enslaves `name` to bridge `bridge` in hairpin mode and brings it up.
pub async fn attach(h: &Handle, name: &str, bridge: &str) -> Result<()> {
    let br = index_of(h, bridge).await?.ok_or_else(|| NetError::Sys {
        op: format!("attach {name}: bridge {bridge} is missing"),
        source: nix::Error::ENODEV,
    })?;
    let idx = index_of(h, name).await?.ok_or_else(|| NetError::Sys {
        op: format!("attach {name} to {bridge}: no such link"),
        source: nix::Error::ENODEV,
    })?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).controller(br).up().build())
        .execute()
        .await
        .map_err(nl(format!("attach {name} to bridge {bridge}")))?;
    // Hairpin: with br_netfilter a DNAT back into the same bridge is bridged, so a container
    // reaching its own published port needs its frame sent back out of the port it came in on.
    h.link()
        .set_port(LinkBridgePort::new(idx).hairpin(true).build())
        .execute()
        .await
        .map_err(nl(format!("set hairpin mode on {name}")))
}

/// Creates veth `host`<->`peer`, attaches `host` to `bridge` and moves `peer` into the
/// namespace open as `ns`. On failure nothing is left behind.
pub async fn create_veth(
    h: &Handle,
    host: &str,
    peer: &str,
    bridge: &str,
    ns: &std::fs::File,
) -> Result<()> {
    delete(h, host).await?;
    delete(h, peer).await?;
    h.link()
        .add(LinkVeth::new(host, peer).build())
        .execute()
        .await
        .map_err(nl(format!("create veth pair {host}/{peer}")))?;
    let rest = async {
        attach(h, host, bridge).await?;
        let pidx = index_of(h, peer).await?.ok_or_else(|| NetError::Sys {
            op: format!("veth peer {peer} vanished"),
            source: nix::Error::ENODEV,
        })?;
        h.link()
            .set(
                LinkUnspec::new_with_index(pidx)
                    .setns_by_fd(ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("move {peer} into the sandbox")))
    };
    if let Err(e) = rest.await {
        let _ = delete(h, host).await;
        return Err(e);
    }
    Ok(())
}

/// Inside a sandbox: renames `tmp` to `ifname`, sets its MAC and address, brings it up and,
/// with `gateway`, makes it the default route.
pub async fn configure_peer(
    h: &Handle,
    tmp: &str,
    ifname: &str,
    mac: [u8; 6],
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
) -> Result<()> {
    let idx = index_of(h, tmp).await?.ok_or_else(|| NetError::Sys {
        op: format!("{tmp} did not arrive in the sandbox"),
        source: nix::Error::ENODEV,
    })?;
    h.link()
        .set(
            LinkUnspec::new_with_index(idx)
                .name(ifname.to_string())
                .address(mac.to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("rename {tmp} to {ifname} in the sandbox")))?;
    add_address(h, idx, ip, prefix, ifname).await?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl(format!("bring {ifname} up in the sandbox")))?;
    if let Some(gw) = gateway {
        set_default_route(h, gw).await?;
    }
    Ok(())
}

/// Inside a sandbox: the default route goes via `gateway` (replacing any other).
pub async fn set_default_route(h: &Handle, gateway: Ipv4Addr) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .build();
    h.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("set the default route via {gateway}")))
}

/// Every IPv4 prefix configured on the host's links (to keep new subnets off them).
pub async fn host_ipv4_nets(h: &Handle) -> Result<Vec<Ipv4Net>> {
    let addrs: Vec<_> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("list host addresses"))?;
    Ok(addrs
        .iter()
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })?;
            Some(Ipv4Net::truncate(ip, m.header.prefix_len))
        })
        .collect())
}
